"""Reconstruction attacks of an honest-but-curious server (DESIGN.md §3), one file per method.

``build(name, **options).fit(view).reconstruct(view, rows)`` -> :class:`ReconstructionOutput`;
the registry (:func:`available`, :func:`get_method`) lists ``exact``, ``rescale``, ``learned``,
``posterior``, ``average`` and ``inference``. Scoring lives in ``collafuse_privacy.eval.reconstruction``.
"""

from .base import (REGISTRY, NotApplicable, ReconstructionAttack, ReconstructionOutput, available, build,
                   get_method, register)  # fmt: skip

# Importing a method's module registers it (order = the order of tables and figures).
from . import exact, rescale, learned, posterior, average, inference  # noqa: E402,F401

__all__ = ["REGISTRY", "NotApplicable", "ReconstructionAttack", "ReconstructionOutput", "available", "build",
           "get_method", "register"]  # fmt: skip
