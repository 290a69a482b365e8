"""Reconstruction attacks of an honest-but-curious server (DESIGN.md §3), one file per method.

``make(name, **options).fit(view).reconstruct(view, rows)`` -> :class:`ReconstructionOutput`;
the registry (:func:`names`, :func:`get`) lists ``exact``, ``rescale``, ``learned``,
``posterior``, ``average`` and ``inference``. Scoring lives in ``collafuse_privacy.eval.reconstruction``.
"""

from .base import (FAMILY, NotApplicable, ReconstructionAttack, ReconstructionOutput, get, make, names,  # noqa: F401
                   register)  # fmt: skip

# Importing a method's module registers it (order = the order of tables and figures).
from . import exact, rescale, learned, posterior, average, inference  # noqa: E402,F401
