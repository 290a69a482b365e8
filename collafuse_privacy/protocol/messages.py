"""What crosses the cut: the messages from a client to the server.

A message holds exactly what the protocol sends (DESIGN.md §1) and nothing
else: no image ids, no clean images. The in-process :class:`Transport` hands
messages to the server; a network transport can replace it without touching
either party, because parties only ever see :class:`Message` objects, and a
message travels as its :meth:`Message.tensors` (rebuilt by :func:`from_tensors`).

* ``shared-noise``: ``(x_t, t, eps)`` per image with ``t >= t_c``. Because
  ``eps`` travels, ``x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar)`` exactly.
* ``cut-image``: only the hand-over image ``h = x_{t_c-1}``; the server draws
  its own timestep and noise on the tail schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Message:
    """Base: sender id and optional labels (sent only when the config says so)."""

    client: int
    labels: Optional[torch.Tensor]

    def __len__(self) -> int:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of tensor payload (at the dtype held), for burden accounting."""
        return sum(v.numel() * v.element_size() for v in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The payload by wire name: ``x`` (the image sent), ``t``, ``eps``, ``labels``."""
        raise NotImplementedError


@dataclass(frozen=True)
class SharedNoiseMessage(Message):
    """``x_t`` [n, C, H, W], ``t`` [n] (int64, all ``>= t_c``), ``eps`` [n, C, H, W]."""

    x_t: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"x": self.x_t, "t": self.t, "eps": self.eps}
        if self.labels is not None:
            out["labels"] = self.labels
        return out


@dataclass(frozen=True)
class CutImageMessage(Message):
    """``h`` [n, C, H, W]: hand-over images at level ``t_c - 1`` (``x0`` if ``t_c = 0``)."""

    h: torch.Tensor

    def __len__(self) -> int:
        return int(self.h.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"x": self.h}
        if self.labels is not None:
            out["labels"] = self.labels
        return out


def from_tensors(client: int, tensors: dict[str, torch.Tensor]) -> Message:
    """Rebuild a message from its :meth:`Message.tensors` (what a network transport carries)."""
    labels = tensors.get("labels")
    if "eps" in tensors:
        return SharedNoiseMessage(client, labels, x_t=tensors["x"], t=tensors["t"], eps=tensors["eps"])
    return CutImageMessage(client, labels, h=tensors["x"])


class Transport:
    """In-process delivery: ``send`` calls every receiver (the server, then the view recorder)."""

    def __init__(self, *receivers: Callable[[Message], None]):
        self.receivers = list(receivers)
        self.messages = 0
        self.bytes = 0

    def send(self, msg: Message) -> None:
        self.messages += 1
        self.bytes += msg.nbytes()
        for receive in self.receivers:
            receive(msg)
