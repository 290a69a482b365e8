"""A run's formal privacy: ``metrics/privacy.json`` and the ``privacy`` CLI table.

Two guarantees, side by side (DESIGN.md §4):

* ``view``: the server's view of one image as a Gaussian mechanism (GDP release
  accounting, :mod:`.accounting`): ``mu``, ``epsilon`` at ``delta``, releases per
  image (1 with ``fixed_noise``; otherwise the most times any member image
  actually crossed the cut, counted during training), ``inf`` for shared-noise.
* ``client_dp``: DP-SGD epsilon of each client's model (Opacus accountant), what
  protects a client when it releases its model or its samples.

Schema of ``metrics/privacy.json`` (infinite numbers as the string ``"inf"``)::

    {"protocol", "cut_ratio", "t_c", "timesteps",
     "view": {"mu", "epsilon", "delta", "releases_per_image", "fixed_noise",
              "per_release": {"mu", "epsilon"}, "epochs", "sensitivity_l2", "note"},
     "cut_choice": null | {"target_epsilon", "delta", "releases_per_image", "cut_ratio", "t_c",
                           "mu", "epsilon", "message"},
     "client_dp": {"enabled", "epsilon", "delta", "noise_multiplier", "max_grad_norm",
                   "accountant", "sample_rate", "steps", "grad_sample_mode", "target_epsilon",
                   "clients": [{"client", "epsilon", "noise_multiplier", "sample_rate", "steps"}],
                   "note"}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from ..config import Config
from ..errors import UserError
from .accounting import INF, dp_sgd_epsilon, epochs_bound, planned_releases, poisson_draws_bound, sensitivity, view_privacy


def _jsonable(x):
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _num(x) -> float:
    return INF if x == "inf" else float(x)


def compute_privacy(
    cfg: Config,
    image_shape,
    *,
    release_counts=None,
    dp_states: Optional[list[dict]] = None,
    n_members: list[int],
    steps: int,
    cut_choice: Optional[dict] = None,
) -> dict:
    """The privacy report of a run (see the module docstring for the schema).

    ``image_shape`` (C, H, W); ``release_counts``: per client a [n] tensor of how often
    each member image crossed the cut (None: unknown, the planned bound is used);
    ``dp_states``: per client ``DPSGD.state_dict()`` (None without DP-SGD);
    ``n_members``: member images per client; ``steps``: rounds run.
    """
    from ..diffusion import abar_at, make_scheduler

    p, dp = cfg.protocol, cfg.defense.client_dp
    T, t_c = cfg.diffusion.timesteps, cfg.t_c
    delta = p.target_delta if p.target_delta is not None else dp.delta
    abar_h = float(abar_at(make_scheduler(cfg.diffusion), t_c - 1))
    B, n_min = cfg.train.batch_size, min(n_members)
    if release_counts is not None:
        counted = max((int(c.max()) if len(c) else 0) for c in release_counts)
        releases = (1 if counted > 0 else 0) if p.fixed_noise else counted
        how = "counted during training"
    else:
        draws = (poisson_draws_bound(steps, min(1.0, B / n_min), n_min) if dp.enabled
                 else epochs_bound(steps, B, n_min))  # fmt: skip
        releases = planned_releases(p.fixed_noise, draws)
        how = "bound from the rounds run (counts not recorded)"
    mu, eps = view_privacy(p.kind, t_c, T, abar_h, image_shape, releases, delta)
    mu1, eps1 = view_privacy(p.kind, t_c, T, abar_h, image_shape, 1, delta)
    D = sensitivity(image_shape)
    if t_c >= T:
        note = "c = 1: nothing crosses the cut"
    elif p.kind == "shared-noise":
        note = "shared-noise sends eps beside x_t: the server recovers x0 exactly (epsilon infinite)"
    elif t_c == 0:
        note = "c = 0: the server receives the clean images (epsilon infinite)"
    else:
        note = (
            f"cut-image: each release h is a Gaussian mechanism, mu = sqrt(abar/(1-abar)) * D with "
            f"abar[t_c-1] = {abar_h:.4g}, worst-case L2 sensitivity D = 2 sqrt(d) = {D:.4g}; "
            f"{releases} release(s) per image ({'fixed noise: re-sends repeat the same h' if p.fixed_noise else how}) "
            "compose to sqrt(R) * mu"
        )
    view = {
        "mu": mu,
        "epsilon": eps,
        "delta": delta,
        "releases_per_image": releases,
        "fixed_noise": p.fixed_noise,
        "per_release": {"mu": mu1, "epsilon": eps1},
        "epochs": steps * B / n_min if n_min else 0.0,
        "sensitivity_l2": D,
        "note": note,
    }
    return _jsonable({
        "protocol": p.kind,
        "cut_ratio": p.cut_ratio,
        "t_c": t_c,
        "timesteps": T,
        "step": steps,
        "view": view,
        "cut_choice": None if cut_choice is None else dict(cut_choice),
        "client_dp": _client_dp(cfg, dp_states, n_members, t_c),
    })  # fmt: skip


def _client_dp(cfg: Config, dp_states, n_members, t_c) -> dict:
    dp = cfg.defense.client_dp
    base = {
        "enabled": dp.enabled,
        "delta": dp.delta,
        "max_grad_norm": dp.max_grad_norm if dp.enabled else None,
        "accountant": dp.accountant if dp.enabled else None,
        "grad_sample_mode": dp.grad_sample_mode if dp.enabled else None,
        "target_epsilon": dp.target_epsilon if dp.enabled else None,
    }
    if not dp.enabled:
        return {**base, "epsilon": INF, "noise_multiplier": None, "sample_rate": None, "steps": 0, "clients": [],
                "note": "no DP-SGD: client models carry no formal guarantee if released"}  # fmt: skip
    if t_c == 0 or dp_states is None:
        return {**base, "epsilon": 0.0, "noise_multiplier": dp.noise_multiplier, "sample_rate": None, "steps": 0,
                "clients": [], "note": "c = 0: client models are never trained"}  # fmt: skip
    clients = []
    for k, (st, n) in enumerate(zip(dp_states, n_members)):
        hist = st["history"]
        clients.append({
            "client": k,
            "epsilon": dp_sgd_epsilon(hist, dp.delta, dp.accountant),
            "noise_multiplier": float(st["noise_multiplier"]),
            "sample_rate": min(1.0, cfg.train.batch_size / n),
            "steps": sum(int(h[2]) for h in hist),
        })  # fmt: skip
    return {
        **base,
        "epsilon": max(c["epsilon"] for c in clients),
        "noise_multiplier": min(c["noise_multiplier"] for c in clients),
        "sample_rate": max(c["sample_rate"] for c in clients),
        "steps": max(c["steps"] for c in clients),
        "clients": clients,
        "note": "epsilon: the largest over clients (Opacus accountant over the steps run, Poisson sampling)",
    }


def write_privacy(run_dir: str | Path, report: dict) -> Path:
    from ..io import atomic_write_json

    path = Path(run_dir) / "metrics" / "privacy.json"
    atomic_write_json(path, report)
    return path


def privacy_report(run_dir: str | Path, recompute: bool = False) -> dict:
    """``metrics/privacy.json`` of a trained run; recomputed from the config, the latest
    checkpoint and ``splits.json`` when missing (or ``recompute``), then written."""
    from ..io import load_state
    from ..rundir import read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    path = run_dir / "metrics" / "privacy.json"
    latest = run_dir / "checkpoints" / "latest.json"
    meta = run_dir / "server_view" / "meta.json"
    if not latest.is_file() or not meta.is_file():
        raise UserError(f"{run_dir} has no finished checkpoint to compute privacy from; train it first")
    try:
        info = json.loads(latest.read_text())
        step_dir, step = info["dir"], int(info["step"])
        d = json.loads(meta.read_text())["data"]
        splits = json.loads((run_dir / "splits.json").read_text())
        n_members = [len(c["members"]) for c in splits["clients"]]
    except (ValueError, KeyError, TypeError, OSError):
        raise UserError(f"{run_dir}: checkpoints/latest.json, server_view/meta.json or splits.json is corrupt") from None
    if path.is_file() and not recompute:
        try:
            cached = json.loads(path.read_text())
            if cached.get("step") == step:  # it describes the latest checkpoint
                return cached
        except ValueError:
            pass  # damaged: recompute below
    state = load_state(run_dir / "checkpoints" / step_dir / "state.pt")
    shape = (int(d["channels"]), int(d["image_size"]), int(d["image_size"]))
    parties = state.get("parties", {})
    dp_states = [parties[f"client-{k}"]["dp"] for k in range(len(n_members)) if "dp" in parties.get(f"client-{k}", {})]
    cut_choice = None
    if cfg.protocol.target_epsilon is not None:
        cut_choice = {"target_epsilon": cfg.protocol.target_epsilon, "cut_ratio": cfg.protocol.cut_ratio, "t_c": cfg.t_c,
                      "message": "recomputed from the resolved config"}  # fmt: skip
    report = compute_privacy(cfg, shape, release_counts=state.get("release_counts"),
                             dp_states=dp_states or None, n_members=n_members, steps=int(state.get("step", step)),
                             cut_choice=cut_choice)  # fmt: skip
    write_privacy(run_dir, report)
    return report


def _fmt(x, spec: str = ".4g") -> str:
    if x is None:
        return "-"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "inf"
    return format(float(x), spec) if isinstance(x, (int, float)) else str(x)


def format_privacy(report: dict) -> str:
    """The epsilon table of a run (plain text)."""
    v, dp = report["view"], report["client_dp"]
    lines = [
        f"server view: {report['protocol']}, cut ratio c = {report['cut_ratio']:g} "
        f"(t_c = {report['t_c']} of T = {report.get('timesteps', '?')})",
        f"  {'':24s} {'releases':>9s} {'mu':>11s} {'epsilon':>11s} {'delta':>9s}",
        f"  {'one release':24s} {1:>9d} {_fmt(v['per_release']['mu']):>11s} {_fmt(v['per_release']['epsilon']):>11s} "
        f"{_fmt(v['delta'], 'g'):>9s}",
        f"  {'this run':24s} {v['releases_per_image']:>9d} {_fmt(v['mu']):>11s} {_fmt(v['epsilon']):>11s} "
        f"{_fmt(v['delta'], 'g'):>9s}",
        f"  fixed noise: {'yes' if v['fixed_noise'] else 'no'}; epochs run: {_fmt(v.get('epochs'), '.3g')}",
        f"  {v['note']}",
    ]
    if report.get("cut_choice"):
        lines.append(f"  cut chosen by protocol.target_epsilon: {report['cut_choice'].get('message', '')}")
    if dp["enabled"]:
        lines.append(
            f"client DP-SGD ({dp['accountant']}, delta = {_fmt(dp['delta'], 'g')}, max_grad_norm = {_fmt(dp['max_grad_norm'], 'g')}, "
            f"grad_sample_mode = {dp['grad_sample_mode']}):"
        )
        lines.append(f"  {'client':>8s} {'epsilon':>10s} {'sigma':>8s} {'q':>8s} {'steps':>7s}")
        for c in dp["clients"]:
            lines.append(f"  {c['client']:>8d} {_fmt(c['epsilon']):>10s} {_fmt(c['noise_multiplier']):>8s} "
                         f"{_fmt(c['sample_rate']):>8s} {c['steps']:>7d}")  # fmt: skip
        lines.append(f"  {dp['note']}")
    else:
        lines.append(f"client DP-SGD: off ({dp['note']})")
    return "\n".join(lines)
