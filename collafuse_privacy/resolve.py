"""What a config leaves to be derived before a run starts, as one pure step.

``protocol.target_epsilon`` (DESIGN.md §4) picks the smallest cut ratio whose server view
meets the budget; the resolved config carries that ``cut_ratio``, so the run directory is
named from it and ``config.yaml`` records it. Releases per image are fixed before training
(1 with fixed noise, else the most times an image can be drawn in ``train.steps`` rounds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .client_secrets import Secrets, secrets_for
from .config import Config
from .data import Dataset, Splits, load_dataset, make_splits
from .errors import UserError
from .protocol import Cut, protocol_for
from .run.directory import RunDir
from .run.schemas import CutChoice
from .defenses import accounting
from .defenses.accounting import POISSON_TAIL, epochs_bound, poisson_draws_bound, smallest_cut
from .defenses.unlinked import refusal_for, view_unlinked


@dataclass(frozen=True)
class Resolved:
    """A config with its derived values, and the data it was derived from."""

    cfg: Config
    data: Dataset
    splits: Splits
    secrets: Secrets
    cut_choice: Optional[CutChoice] = None


def planned_releases(cfg: Config, n_members: list[int], steps: Optional[int] = None) -> tuple[int, float]:
    """Releases per image known before training (``defenses.accounting.planned_releases``), and the
    probability that the bound fails (Poisson sampling: a union bound over the images; 0 for the
    epochs of a seeded batcher, which is certain). ``steps``: rounds (default ``train.steps``)."""
    n = min(n_members)
    B, R = cfg.train.batch_size, cfg.train.steps if steps is None else steps
    if cfg.defense.client_dp.enabled or cfg.train.sampling == "poisson":
        draws, fail = poisson_draws_bound(R, min(1.0, B / n), n), POISSON_TAIL
    else:
        draws, fail = epochs_bound(R, B, n), 0.0
    releases = accounting.planned_releases(cfg.protocol.fixed_noise, draws)
    return releases, (0.0 if cfg.protocol.fixed_noise else fail)


def view_delta(cfg: Config) -> float:
    """delta of the server view's epsilon: ``protocol.target_delta``, else the DP-SGD delta."""
    p = cfg.protocol
    return p.target_delta if p.target_delta is not None else cfg.defense.client_dp.delta


def resolve_cut(cfg: Config, data: Dataset, splits: Splits, run_dir: Optional[Path] = None) -> tuple[Config, CutChoice]:
    """``protocol.target_epsilon`` -> the smallest cut whose view meets it.

    A run in ``run_dir`` made for the same target keeps its cut if that still meets the
    target (more rounds mean more releases with fresh noise) and is refused otherwise.
    """
    if cfg.model.server_conditioning == "labels":
        raise UserError("protocol.target_epsilon with model.server_conditioning=labels: the labels cross the cut in "
                        "the clear, so no cut gives a finite epsilon (the view's replace-one adjacency replaces the "
                        "label too); condition the server on 'client' or 'none', or drop target_epsilon")  # fmt: skip
    p, delta, shape = cfg.protocol, view_delta(cfg), tuple(data.shape)
    if p.target_threat == "unlinked":
        return _resolve_unlinked_cut(cfg, shape, [len(m) for m in splits.members], run_dir)
    releases, fail = planned_releases(cfg, [len(m) for m in splits.members])
    cut = Cut.from_config(cfg)
    t_c, mu, eps = smallest_cut(cut.abar_table.numpy(), shape, releases, p.target_epsilon, delta)
    ratio = t_c / cut.T
    if run_dir is not None and RunDir(run_dir).exists():
        old = RunDir(run_dir).config()
        if old.protocol.target_epsilon == p.target_epsilon and old.protocol.cut_ratio != ratio:
            mu_o, eps_o = protocol_for(old).view_privacy(shape, releases, delta)
            if eps_o > p.target_epsilon:
                raise UserError(
                    f"protocol.target_epsilon={p.target_epsilon:g}: {cfg.train.steps} rounds allow up to {releases} "
                    f"releases per image, and the run's cut c={old.protocol.cut_ratio:g} then gives epsilon={eps_o:.3g}; "
                    f"it would need c={ratio:g}: choose another --out"
                )
            t_c, mu, eps, ratio = old.t_c, mu_o, eps_o, old.protocol.cut_ratio
    cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(p, cut_ratio=ratio))
    message = (f"protocol.target_epsilon={p.target_epsilon:g} (delta={delta:g}"
               + (f" + {fail:g}, the chance that Poisson sampling draws an image more often" if fail else "")
               + f", {releases} release(s) per image): "
               f"cut_ratio={ratio:g} (t_c={t_c} of T={cut.T}) is the smallest cut meeting it, epsilon={eps:.4g}, "
               f"mu={mu:.4g}" + ("; c=1: nothing crosses the cut" if t_c == cut.T else ""))  # fmt: skip
    return cfg, CutChoice(target_epsilon=p.target_epsilon, cut_ratio=ratio, t_c=t_c, message=message, delta=delta,
                          releases_per_image=releases, mu=mu, epsilon=eps)  # fmt: skip


def _resolve_unlinked_cut(cfg: Config, shape, n_members: list[int], run_dir: Optional[Path]) -> tuple[Config, CutChoice]:
    """``protocol.target_threat: unlinked``: the smallest cut whose unlinked epsilon (the secret-sampling
    bound, replace-one, the view's adjacency; ``defenses/unlinked.py``) over ``train.steps`` rounds meets
    the target, for the client with the fewest members (the highest sampling rate, or the most epochs).
    Refused when its assumptions fail."""
    p, delta = cfg.protocol, view_delta(cfg)
    why = refusal_for(cfg)  # labels with a target were refused before (resolve_cut)
    if why is not None:
        raise UserError(f"protocol.target_threat=unlinked: the unlinked epsilon is {why}; target the linked one "
                        "(protocol.target_threat=linked) or change that setting")  # fmt: skip
    cut, n = Cut.from_config(cfg), min(n_members)

    def at(t_c: int) -> tuple[float, float]:
        c = cut.with_t_c(t_c)
        v = view_unlinked(c.abar_handover, t_c, c.T, shape, sampling=cfg.client_sampling,
                          batch_size=cfg.train.batch_size, n_members=n, rounds=cfg.train.steps, delta=delta)  # fmt: skip
        return v.mu, v.epsilon

    lo, hi = 1, cut.T  # epsilon falls as t_c grows (less signal, fewer draws beyond the cut); t_c = T sends nothing
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid)[1] <= p.target_epsilon:
            hi = mid
        else:
            lo = mid + 1
    t_c = lo
    mu, eps = at(t_c)
    ratio = t_c / cut.T
    if run_dir is not None and RunDir(run_dir).exists():
        old = RunDir(run_dir).config()
        if old.protocol.target_epsilon == p.target_epsilon and old.protocol.cut_ratio != ratio:
            mu_o, eps_o = at(old.t_c)
            if eps_o > p.target_epsilon:
                raise UserError(f"protocol.target_epsilon={p.target_epsilon:g} (unlinked): {cfg.train.steps} rounds at "
                                f"the run's cut c={old.protocol.cut_ratio:g} give epsilon={eps_o:.3g}; it would need "
                                f"c={ratio:g}: choose another --out")  # fmt: skip
            t_c, mu, eps, ratio = old.t_c, mu_o, eps_o, old.protocol.cut_ratio
    cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(p, cut_ratio=ratio))
    draws = (f"Poisson sampling at rate {min(1.0, cfg.train.batch_size / n):.4g}" if cfg.client_sampling == "poisson"
             else "shuffled epochs")  # fmt: skip
    message = (f"protocol.target_epsilon={p.target_epsilon:g} for the unlinked server (secret-sampling bound, "
               f"replace-one, delta={delta:g}, {cfg.train.steps} rounds of {draws}): "
               f"cut_ratio={ratio:g} (t_c={t_c} of T={cut.T}) is the smallest cut meeting it, epsilon={eps:.4g}, "
               f"per-release mu={mu:.4g}" + ("; c=1: nothing crosses the cut" if t_c == cut.T else ""))  # fmt: skip
    return cfg, CutChoice(target_epsilon=p.target_epsilon, cut_ratio=ratio, t_c=t_c, message=message, delta=delta,
                          mu=mu, epsilon=eps, threat="unlinked")  # fmt: skip


def resolve(cfg: Config, run_dir: Optional[Path] = None, secrets: Optional[Secrets] = None) -> Resolved:
    """Load the data, split it with the clients' secret, and resolve ``cfg``; everything that
    can fail on bad input fails here, before a run directory is touched.

    ``secrets``: those of the run in ``run_dir`` when it has some, else ``secrets`` (a sweep's,
    or the run an ``evaluate`` sibling belongs to), else new ones (``client_secrets.py``).
    """
    data = load_dataset(cfg.data)
    s = secrets_for(cfg, run_dir, secrets)
    splits = make_splits(data, cfg.data, s.split)
    choice = None
    if cfg.protocol.target_epsilon is not None:
        cfg, choice = resolve_cut(cfg, data, splits, run_dir)
    return Resolved(cfg, data, splits, s, choice)
