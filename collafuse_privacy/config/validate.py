"""Validation of a loaded config: choices, ranges, and the checks of the layers above the config.

A key's allowed values come from :data:`.choices.CHOICES` (derived from the declared names of the
registries); what only a layer above can judge (what a protocol can do, whether a schedule ends
near pure noise) is a check that layer adds with :func:`add_check` when it is imported
(``collafuse_privacy.protocol`` adds the protocol's and the schedule's), so the config imports
no module above it.
"""

from __future__ import annotations

from typing import Callable

from ..errors import UserError
from .choices import CHOICES, RANGES
from .schema import Config

CHECKS: list[Callable[[Config], None]] = []


def add_check(check: Callable[[Config], None]) -> Callable[[Config], None]:
    """Run ``check(cfg)`` (raising :class:`UserError` naming the key) at the end of every :func:`validate`."""
    if check not in CHECKS:
        CHECKS.append(check)
    return check


def _get(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _check_choices_and_ranges(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise UserError(f"config key '{key}' must be one of {shown}, got {value!r}")
    for key, lo, hi, lo_inc, hi_inc in RANGES:
        value = _get(cfg, key)
        if value is None:
            continue
        bad = (lo is not None and (value < lo if lo_inc else value <= lo)) or (
            hi is not None and (value > hi if hi_inc else value >= hi)
        )
        if bad:
            lo_s = ("[" if lo_inc else "(") + str(lo)
            hi_s = (str(hi) if hi is not None else "inf") + ("]" if hi_inc else ")")
            raise UserError(f"config key '{key}' must lie in {lo_s}, {hi_s}, got {value!r}")


def validate(cfg: Config) -> Config:
    """``cfg`` itself, or UserError naming the first key that is out of its choices or range."""
    _check_choices_and_ranges(cfg)
    if cfg.diffusion.beta_end <= cfg.diffusion.beta_start:
        raise UserError("config key 'diffusion.beta_end' must be larger than 'diffusion.beta_start'")
    if cfg.data.holdout_fraction + cfg.data.public_fraction >= 1.0:
        raise UserError("config keys 'data.holdout_fraction' + 'data.public_fraction' must stay below 1")
    if cfg.data.name in ("cifar10", "image-folder") and not cfg.data.root:
        raise UserError(f"config key 'data.root' is required for data.name={cfg.data.name}")
    dp = cfg.defense.client_dp
    if dp.enabled:
        if dp.noise_multiplier is not None and dp.target_epsilon is not None:
            raise UserError(
                "config keys 'defense.client_dp.noise_multiplier' and 'defense.client_dp.target_epsilon' "
                "exclude each other: set one (the other is derived)"
            )
        if dp.noise_multiplier is None and dp.target_epsilon is None:
            raise UserError(
                "config key 'defense.client_dp.enabled' needs 'defense.client_dp.noise_multiplier' "
                "or 'defense.client_dp.target_epsilon'"
            )
    for check in CHECKS:  # what only some protocols can do; a schedule that does not end near pure noise
        check(cfg)
    return cfg
