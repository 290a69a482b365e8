"""Numbers in files and tables: one encoding for JSON, one formatting for text.

Strict JSON has neither infinity nor NaN. Every file a run writes stores ``+-inf`` as the
strings ``"inf"`` / ``"-inf"`` and NaN (a number that could not be computed) as ``null``;
:func:`to_json` encodes, :func:`num` decodes. :func:`fmt` and :func:`fmt_interval` are
the one formatting of numbers in tables (report, CLI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

INF = float("inf")


def to_json(x: Any) -> Any:
    """``x`` with every float made JSON-safe (recursively through dicts, lists, tuples);
    numpy scalars and 0-d tensors become Python numbers."""
    if isinstance(x, np.generic) or (isinstance(x, torch.Tensor) and x.dim() == 0):
        x = x.item()
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {k: to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    return x


def num(x: Any) -> float:
    """A number as stored by :func:`to_json` -> float (``"inf"`` -> inf, ``None`` -> nan)."""
    if x is None:
        return float("nan")
    if isinstance(x, str):
        if x in ("inf", "+inf", "-inf"):
            return -INF if x.startswith("-") else INF
        raise ValueError(f"not a number: {x!r}")
    return float(x)


def fmt(x: Any, spec: str = ".3g", missing: str = "n/a") -> str:
    """``x`` formatted with ``spec``; ``missing`` for None / NaN, ``inf`` for infinity."""
    if x is None:
        return missing
    if isinstance(x, str):
        try:
            x = num(x)
        except ValueError:
            return x
    x = float(x)
    if math.isnan(x):
        return missing
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def fmt_interval(iv: Optional[Any], spec: str = ".3f", missing: str = "n/a") -> str:
    """``value [lo, hi]`` of an interval (a dict or an object with value/lo/hi); ``missing`` if None."""
    if iv is None:
        return missing
    get = iv.get if isinstance(iv, dict) else (lambda k: getattr(iv, k))
    return f"{fmt(get('value'), spec, missing)} [{fmt(get('lo'), spec, missing)}, {fmt(get('hi'), spec, missing)}]"


@dataclass(frozen=True)
class Interval:
    """A statistic and its confidence interval (``level``, e.g. 0.95; ``n_boot`` resamples
    behind it, 0 when not bootstrapped). NaN marks what could not be computed."""

    value: float
    lo: float
    hi: float
    level: float = 0.95
    n_boot: int = 0

    def to_dict(self) -> dict:
        return to_json({"value": float(self.value), "lo": float(self.lo), "hi": float(self.hi), "level": self.level,
                        "n_boot": self.n_boot})  # fmt: skip

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"
