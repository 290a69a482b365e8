"""What the server model is conditioned on (``model.server_conditioning``), one registered class each.

* ``none``: nothing; no label and no class embedding.
* ``client``: the sender's id, which every message carries in its envelope (the server knows who sent
  what); the server model embeds ``data.clients`` classes.
* ``labels``: the image's label, which then crosses the cut in the clear beside the image (no finite
  epsilon holds for the view: a replaced image's label is seen exactly, ``Protocol.release_mu``).

A conditioning decides which of a client's labels cross (:meth:`Conditioning.message_labels`) and
builds the server's class labels from the messages it received (:meth:`Conditioning.class_labels`);
no other module branches on its name.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch

from ..config import CONDITIONING_NAMES
from ..registry import Registry
from ..rng import randint
from .messages import Message


class Conditioning:
    """One way of conditioning the server model; ``sends_labels``: the labels cross the cut."""

    name: ClassVar[str] = ""
    sends_labels: ClassVar[bool] = False

    def class_embeds(self, clients: int, num_classes: int) -> Optional[int]:
        """Size of the server model's class embedding (None: an unconditional model)."""
        return None

    def message_labels(self, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """What of the client's labels ``[n]`` goes into its message (None: nothing)."""
        return labels if self.sends_labels else None

    def class_labels(self, msgs: list[Message]) -> Optional[torch.Tensor]:
        """The server's class labels ``[sum len(m)]`` int64 for the rows of ``msgs``, in their order."""
        return None

    def sample_labels(self, client: int, n: int, num_class_embeds: Optional[int], gen: torch.Generator,
                      device) -> Optional[torch.Tensor]:  # fmt: skip
        """Class labels ``[n]`` of the server's part of sampling for ``client`` (labels drawn from ``gen``)."""
        return None

    def probe_classes(self, client: Optional[int], clients: int, num_class_embeds: Optional[int]) -> Optional[range]:
        """The classes an attacker on the server model tries (it keeps the best match): the asked client's
        id, every client or class when unknown; None: the model takes no label."""
        return None


CONDITIONINGS: Registry = Registry("server conditioning", Conditioning, names=CONDITIONING_NAMES)


@CONDITIONINGS.register("none")
class NoConditioning(Conditioning):
    pass


@CONDITIONINGS.register("client")
class ClientConditioning(Conditioning):
    def class_embeds(self, clients, num_classes):
        return clients

    def class_labels(self, msgs):
        return torch.cat([torch.full((len(m),), m.client, dtype=torch.long) for m in msgs])

    def sample_labels(self, client, n, num_class_embeds, gen, device):
        return torch.full((n,), client, dtype=torch.long, device=device)

    def probe_classes(self, client, clients, num_class_embeds):
        return range(int(client), int(client) + 1) if client is not None else range(clients)


@CONDITIONINGS.register("labels")
class LabelConditioning(Conditioning):
    sends_labels = True

    def class_embeds(self, clients, num_classes):
        return num_classes

    def class_labels(self, msgs):
        return torch.cat([m.labels for m in msgs])

    def sample_labels(self, client, n, num_class_embeds, gen, device):
        return randint(num_class_embeds, n, gen).to(device)

    def probe_classes(self, client, clients, num_class_embeds):
        return range(int(num_class_embeds)) if num_class_embeds else None


def make_conditioning(name: str) -> Conditioning:
    """The conditioning ``name`` (UserError listing the known ones for an unknown one)."""
    return CONDITIONINGS.get(name)()
