"""The linked view's accountant, in the style of opacus' ``IAccountant`` (``step``, ``get_epsilon``,
``state_dict`` / ``load_state_dict``).

The "linked" server attributes every release to its image, so what it learns of one image is the
composition of that image's releases: ``R`` Gaussian mechanisms of the protocol's per-release ``mu``
(:meth:`Protocol.view_privacy`), with ``R`` the most releases any member image got (one for fixed
noise: a re-send repeats the same ``h``). A client's accountant is stepped with the positions of the
member images each of its messages released (client-side: the rows carry no ids) and checkpointed
with the run (``release_counts`` of its :class:`~collafuse_privacy.checkpoint.ClientState`);
``defenses/privacy.py`` reads the counts of every client. The unlinked server's bound
(``defenses/unlinked.py``) needs no counts: it follows from the sampling rates and the rounds.
"""

from __future__ import annotations

import torch

from .base import Protocol


def releases_per_image(counts: list[torch.Tensor], fixed_noise: bool) -> int:
    """The most releases any image got over the clients' ``counts`` (fixed noise: 1 once any crossed)."""
    counted = max((int(c.max()) if len(c) else 0) for c in counts)
    return (1 if counted > 0 else 0) if fixed_noise else counted


class ReleaseAccountant:
    """Release counts of one client's ``n`` member images, and the linked view's privacy they give."""

    mechanism = "gdp-releases"

    def __init__(self, protocol: Protocol, image_shape: tuple, n: int):
        self.protocol, self.image_shape = protocol, tuple(image_shape)
        self.counts = torch.zeros(n, dtype=torch.long)  # [n] times each member image crossed the cut

    def step(self, positions: torch.Tensor) -> None:
        """One message released the member images at ``positions`` ([m] int64, client-side)."""
        self.counts.index_add_(0, positions, torch.ones_like(positions))

    def releases(self) -> int:
        return releases_per_image([self.counts], self.protocol.fixed_noise)

    def get_privacy(self, delta: float) -> tuple[float, float]:
        """``(mu, epsilon)`` of the linked view of this client's most released image."""
        return self.protocol.view_privacy(self.image_shape, self.releases(), delta)

    def get_epsilon(self, delta: float) -> float:
        return self.get_privacy(delta)[1]

    def state_dict(self) -> dict:
        return {"release_counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        counts = state["release_counts"]
        if counts.shape != self.counts.shape:
            raise ValueError("release counts do not fit")
        self.counts = counts.clone()
