"""Interface and registry of reconstruction attacks (DESIGN.md §3, STYLE.md "What we take" 1-2).

A reconstruction attack is a class registered by name::

    attack = make("rescale")             # keyword arguments: the method's options
    attack.fit(view)                     # -> self; trains whatever it needs on the public split
    out = attack.reconstruct(view, rows) # -> ReconstructionOutput

It sees a :class:`collafuse_privacy.view.ServerView` and nothing else (no ground
truth, no splits, no config file). ``rows`` selects what to reconstruct: indices
into ``view.messages`` for training-message methods (``source = "messages"``), into
``view.handover`` for the inference method (``source = "handover"``); ``None``
means all. A method that does not apply to a view (``exact`` on cut-image, anything
when nothing was sent) raises :class:`NotApplicable` with the reason.

Attacks never compute metrics; ``collafuse_privacy.eval.reconstruction`` scores
their outputs against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from collafuse_privacy.errors import UserError

from ..base import Family, NotApplicable  # noqa: F401  (NotApplicable: part of this family's API)
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


@dataclass(frozen=True)
class ReconstructionOutput:
    """What an attack returns.

    ``images``: ``[N, C, H, W]`` float32 in ``[-1, 1]``, the server's guess of a clean image.
    ``rows``: ``[N]`` int64; ``images[i]`` reconstructs row ``rows[i]`` of ``view.messages``
    (``source = "messages"``) or of ``view.handover`` (``source = "handover"``).
    ``groups``: optional, for linking methods: ``groups[i]`` ``[R_i]`` int64 are the message
    rows ``images[i]`` was built from (``rows[i]`` among them).
    ``info``: method diagnostics (JSON-serialisable numbers and strings).
    ``sample``: for methods that sample (``posterior``, ``inference``), one sample per row; then
    ``images`` is the mean of several samples (the posterior mean: the server's best statement in
    MSE), and identification uses the sample (a mean of digits is no digit).
    """

    images: torch.Tensor
    rows: torch.Tensor
    source: str = "messages"
    groups: Optional[list[torch.Tensor]] = None
    info: dict = field(default_factory=dict)
    sample: Optional[torch.Tensor] = None

    @property
    def identify(self) -> torch.Tensor:
        """What the nearest-private-image identification uses: a sample where there is one."""
        return self.sample if self.sample is not None else self.images

    def __post_init__(self):
        if self.images.dim() != 4 or self.rows.dim() != 1 or len(self.images) != len(self.rows):
            shapes = f"{tuple(self.images.shape)}, {tuple(self.rows.shape)}"
            raise ValueError(f"images [N, C, H, W] and rows [N] of one length expected, got {shapes}")
        if self.source not in ("messages", "handover"):
            raise ValueError(f"source must be 'messages' or 'handover', got {self.source!r}")
        if self.groups is not None and len(self.groups) != len(self.rows):
            raise ValueError("one group per reconstructed image expected")


class ReconstructionAttack:
    """Base class. Subclasses set ``name`` (via :func:`register`) and ``source``,
    implement :meth:`check` (raise :class:`NotApplicable`), :meth:`_fit` and :meth:`_reconstruct`."""

    name: ClassVar[str] = ""
    source: ClassVar[str] = "messages"

    OPTIONS = {"seed": SEED}

    def __init__(self, device: str = "cpu", seed: int = 0):
        self.device = torch.device(device)
        self.seed = int(seed)
        self._fitted = False

    # ---- the interface ------------------------------------------------------
    def check(self, view) -> None:
        """Raise :class:`NotApplicable` when the method cannot run on ``view``."""
        why = view.protocol.no_image_rows()
        if why is not None:
            raise NotApplicable(why)
        if self.source == "messages" and len(view) == 0:
            raise NotApplicable("the view holds no recorded training messages (record.enabled was off?)")
        if self.source == "handover" and not view.handover:
            raise NotApplicable("the view holds no hand-over images (run `collafuse-privacy sample` first)")

    def fit(self, view) -> "ReconstructionAttack":
        """Prepare on what the server holds (public split, schedule); returns ``self``."""
        self.check(view)
        self._fit(view)
        self._fitted = True
        return self

    def reconstruct(self, view, rows=None) -> ReconstructionOutput:
        """Reconstruct the selected rows (all when ``rows`` is None)."""
        if not self._fitted:
            self.fit(view)
        self.check(view)
        n = len(view) if self.source == "messages" else len(view.handover["h"])
        if rows is None:
            rows = torch.arange(n)
        rows = torch.as_tensor(rows, dtype=torch.long).flatten()
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise UserError(f"{self.name}: row indices must lie in [0, {n})")
        return self._reconstruct(view, rows)

    def _fit(self, view) -> None:  # default: nothing to learn
        pass

    def _reconstruct(self, view, rows: torch.Tensor) -> ReconstructionOutput:
        raise NotImplementedError


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

FAMILY = Family("reconstruction method", ReconstructionAttack)
register = FAMILY.register  # class decorator; duplicate names are rejected
names = FAMILY.names
get = FAMILY.get  # UserError listing the known names for an unknown one


def make(name: str, **options) -> ReconstructionAttack:
    """An instance of method ``name`` with ``options`` (an unknown or bad option is a UserError)."""
    return FAMILY.make(name, **options)


# ---------------------------------------------------------------------------
# What every method reads from the view
# ---------------------------------------------------------------------------


def noisy_rows(view, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected messages as ``(x [n, C, H, W] float32, level [n] int64)``:
    ``x = sqrt(abar[level]) x0 + sqrt(1 - abar[level]) eps`` (``Protocol.row_levels``)."""
    x = view.messages["x"][rows].float()
    return x, view.protocol.row_levels(view.messages)[rows]


def handover_rows(view, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-over images the server produced at inference: ``(h [n, C, H, W], level [n])``."""
    h = view.handover["h"][rows].float()
    return h, torch.full((len(rows),), view.cut.handover_level, dtype=torch.long)
