"""What crosses the cut: the messages from a client to the server.

A message holds exactly what the protocol sends (DESIGN.md §1) and nothing
else: no image ids, no clean images. The in-process :class:`Transport` hands
messages to the server; a network transport can replace it without touching
either party, because parties only ever see :class:`Message` objects, and a
message travels as its :meth:`Message.tensors` (rebuilt by the protocol:
``Protocol.decode``, which knows its message type; nothing guesses it from the keys).
Each message type declares its wire fields once (:attr:`Message.WIRE`): the bytes a row
costs (:meth:`Message.row_bytes`) are counted from them and nowhere else. What the server
records of a message is its payload in an envelope of ``(client, round)``
(:meth:`Message.enveloped`).

* ``shared-noise``: ``(x_t, t, eps)`` per image with ``t >= t_c``. Because
  ``eps`` travels, ``x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar)`` exactly.
* ``cut-image``: only the hand-over image ``h = x_{t_c-1}``; the server draws
  its own timestep and noise on the tail schedule.
* ``fedavg`` (the federated baseline): no image; every ``train.local_steps`` rounds each
  client's whole model and its member count (:class:`UploadMessage`, one row per upload).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable, ClassVar, Optional

import torch

ENVELOPE = ("client", "round")  # what the server knows of every row besides its payload


@dataclass(frozen=True)
class Message:
    """Base: sender id and optional labels (sent only when the config says so). A subclass declares
    ``WIRE`` (its wire fields and their kinds) and ``ATTRS`` (wire name -> attribute)."""

    client: int
    labels: Optional[torch.Tensor]

    # wire name -> "image" (float32 [C, H, W] per row) or "index" (int64 per row); labels, when sent, add one index
    WIRE: ClassVar[dict[str, str]] = {}
    ATTRS: ClassVar[dict[str, str]] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    @classmethod
    def row_bytes(cls, image_shape, with_labels: bool = False) -> int:
        """Bytes one row costs on the wire (float32 images, int64 timesteps and labels)."""
        d = int(math.prod(image_shape))
        return sum(4 * d if kind == "image" else 8 for kind in cls.WIRE.values()) + (8 if with_labels else 0)

    def nbytes(self) -> int:
        """Bytes of the message's payload, for burden accounting: its rows times :meth:`row_bytes`."""
        return len(self) * self.row_bytes(tuple(self.tensors()["x"].shape[1:]), self.labels is not None)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The payload by wire name: ``x`` (the image sent), ``t``, ``eps``, ``labels``."""
        out = {name: getattr(self, attr) for name, attr in self.ATTRS.items()}
        if self.labels is not None:
            out["labels"] = self.labels
        return out

    @classmethod
    def from_tensors(cls, client: int, tensors: dict[str, torch.Tensor]) -> "Message":
        """The message of this type whose :meth:`tensors` are ``tensors``."""
        return cls(client, tensors.get("labels"), **{attr: tensors[name] for name, attr in cls.ATTRS.items()})

    def enveloped(self, round_: int, keep: Optional[int] = None, dtype: torch.dtype = torch.float32):
        """What the server records of the first ``keep`` rows (all by default): the payload on the CPU
        (floats as ``dtype``, the rest int64), then the envelope ``client`` and ``round`` [keep] int64."""
        keep = len(self) if keep is None else keep
        row = {}
        for k, v in self.tensors().items():
            v = v[:keep].detach().cpu()
            row[k] = v.to(dtype) if v.is_floating_point() else v.to(torch.int64)
        row["client"] = torch.full((keep,), self.client, dtype=torch.int64)
        row["round"] = torch.full((keep,), round_, dtype=torch.int64)
        return row


@dataclass(frozen=True)
class SharedNoiseMessage(Message):
    """``x_t`` [n, C, H, W], ``t`` [n] (int64, all ``>= t_c``), ``eps`` [n, C, H, W]."""

    x_t: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor

    WIRE: ClassVar[dict[str, str]] = {"x": "image", "t": "index", "eps": "image"}
    ATTRS: ClassVar[dict[str, str]] = {"x": "x_t", "t": "t", "eps": "eps"}

    def __len__(self) -> int:
        return int(self.t.shape[0])


@dataclass(frozen=True)
class CutImageMessage(Message):
    """``h`` [n, C, H, W]: hand-over images at level ``t_c - 1`` (``x0`` if ``t_c = 0``)."""

    h: torch.Tensor

    WIRE: ClassVar[dict[str, str]] = {"x": "image"}
    ATTRS: ClassVar[dict[str, str]] = {"x": "h"}

    def __len__(self) -> int:
        return int(self.h.shape[0])


@dataclass(frozen=True)
class UploadMessage(Message):
    """``fedavg``: one client's model after its local steps, ``w`` [1, P] float32 (its parameters
    flattened in ``named_parameters`` order), and ``n`` [1] int64, its member count (FedAvg's
    weight: the server learns every client's data size)."""

    w: torch.Tensor
    n: torch.Tensor

    WIRE: ClassVar[dict[str, str]] = {"x": "image", "n": "index"}  # "image": float32 per element of x's row
    ATTRS: ClassVar[dict[str, str]] = {"x": "w", "n": "n"}

    def __len__(self) -> int:
        return int(self.w.shape[0])


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
