"""Membership-inference interface and registry (DESIGN.md §3, STYLE.md "What we take" 1-2).

Every method is a class registered by name::

    attack = make("view-lrt", target="server", device="cpu")
    attack.fit(view)                              # -> attack; may raise NotApplicable
    s = attack.score(view, candidates, client=k)  # Tensor[M], higher = more likely member

``candidates``: ``[M, C, H, W]`` float images with pixels in [-1, 1]; ``client``:
the client whose membership is asked (the server knows which client sent each
message, so attacks may restrict themselves to that client's releases), or None.
Attacks see only the :class:`~collafuse_privacy.view.ServerView`; ground truth and
metrics live in ``eval/``.

``target``: ``"server"`` (the server's own view and model) or ``"client:K"``
(client K's model is released; the view must be loaded with
``ServerView.load(run_dir, release_clients=[K])``). Under fedavg the server holds every
client's uploads, so ``client:K`` is client K's last recorded upload, with no release.
"""

from __future__ import annotations

from typing import Optional

import torch

from collafuse_privacy.targets import parse_target  # noqa: F401  (part of this family's API)

from ..base import Family, NotApplicable  # noqa: F401  (NotApplicable: part of this family's API)

class MembershipAttack:
    """Base class: ``fit(view) -> self``; ``score(view, candidates, client) -> Tensor[M]``."""

    name: str = ""

    def __init__(self, target: str = "server", device: str | torch.device = "cpu"):
        self.target = target
        self.target_kind, self.target_client = parse_target(target)
        self.device = torch.device(device)

    def fit(self, view) -> "MembershipAttack":
        return self

    def score(self, view, candidates: torch.Tensor, client: Optional[int] = None) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """The attack's settings, recorded beside its numbers."""
        return {}


FAMILY = Family("membership attack", MembershipAttack)
register = FAMILY.register  # class decorator; duplicate names are rejected
names = FAMILY.names
get = FAMILY.get  # UserError listing the known names for an unknown one


def make(name: str, target: str = "server", device: str | torch.device = "cpu", **options) -> MembershipAttack:
    """An instance of attack ``name`` (an unknown or bad option is a UserError)."""
    return FAMILY.make(name, target=target, device=device, **options)
