"""Both formal numbers of the server's view, side by side, for a sweep's cells without training.

    .venv/bin/python benchmarks/unlinked_epsilon.py [--sweep configs/sweep-default.yaml] [--cuts 0 0.2 0.5 0.8 1]
        [--set KEY=VALUE ...]

Each cell is the sweep's base config (its ``config:`` file with ``base:``) at one cut ratio, plus the
sweep's ``include:`` cells, with ``train.sampling=poisson`` and OS secrets (``secrets.derive_from_seed=false``:
the unlinked number assumes them; the demo itself derives its secrets from the seed, so its report
refuses the unlinked number) and any ``--set``. The data are loaded and split as a run would
(members per client), nothing is trained. Printed per cell:

* linked epsilon (replace-one, GDP): the planned bound before training, the most draws any member
  can get in ``train.steps`` rounds of Poisson sampling (a union bound; its failure probability is
  added to delta), composed as that many Gaussian releases. A trained run's ``privacy.json``
  counts the releases instead (smaller: only draws beyond the cut are sent).
* unlinked epsilon, replace-one and add/remove (``defenses/unlinked.py``, dp_accounting PLD): the
  Poisson-subsampled Gaussian with rate ``q * P(t >= t_c)`` per round, composed over ``train.steps``
  rounds, for the client with the most members' rate (the largest epsilon).
* no-hiding epsilon (replace-one): the same secret Poisson draws, but the target's row told apart
  from the others' (no amplification by the other rows): per round "no row" with probability
  ``1 - p``, else one Gaussian row, so after R rounds ``delta(eps) = sum_k Bin(k; R, p)
  delta_GDP(eps; sqrt(k) mu)`` exactly. The unlinked number is below it wherever the others' rows
  are what hides the target's; it is not a number the package reports.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from collafuse_privacy.config import apply_overrides, flatten, from_dict, read_yaml
from collafuse_privacy.data import load_dataset, make_splits
from collafuse_privacy.client_secrets import make_secrets
from collafuse_privacy.defenses.privacy import unlinked_privacy
from collafuse_privacy.protocol import protocol_for
from collafuse_privacy.resolve import planned_releases, view_delta

ROOT = Path(__file__).resolve().parents[1]


def cells(sweep: Path, cuts, extra: list[str]):
    """``(label, config)`` of every cell: the base at each cut ratio, then the sweep's includes."""
    spec = read_yaml(sweep)
    base = read_yaml(sweep.parent / spec["config"])
    common = [f"{k}={v}" for k, v in flatten(spec.get("base", {})).items()]
    common += ["train.sampling=poisson", "secrets.derive_from_seed=false", *extra]
    grid = list(cuts) if cuts else list(spec["grid"]["protocol.cut_ratio"])
    out = [(f"c = {c:g}", from_dict(apply_overrides(base, common + [f"protocol.cut_ratio={c}"]))) for c in grid]
    for inc in spec.get("include", []):
        over = [f"{k}={v}" for k, v in inc.items()]
        label = "c = {:g}, DP-SGD clients".format(inc["protocol.cut_ratio"]) if any(
            "client_dp.enabled" in k for k in inc) else ", ".join(over)  # fmt: skip
        out.append((label, from_dict(apply_overrides(base, common + over))))
    return out


def no_hiding_epsilon(mu: float, rate: float, rounds: int, delta: float) -> float:
    """Smallest eps with ``sum_k Bin(k; rounds, rate) delta_GDP(eps; sqrt(k) mu) <= delta`` (module docstring)."""
    from scipy import optimize
    from scipy.stats import binom

    from collafuse_privacy.defenses.accounting import gdp_delta

    if mu == 0 or rate == 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    ks = [k for k in range(1, rounds + 1) if binom.pmf(k, rounds, rate) > 1e-300]
    w = binom.pmf(ks, rounds, rate)

    def d(eps):
        return sum(wk * gdp_delta(eps, math.sqrt(k) * mu) for wk, k in zip(w, ks))

    if d(0.0) <= delta:
        return 0.0
    hi = 1.0
    while d(hi) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: d(e) - delta, 0.0, hi, xtol=1e-9))


def row(cfg, n_members: list[int], shape) -> dict:
    proto, delta = protocol_for(cfg), view_delta(cfg)
    releases, fail = planned_releases(cfg, n_members)
    mu_linked, eps_linked = proto.view_privacy(shape, releases, delta)
    u = unlinked_privacy(cfg, shape, n_members, cfg.train.steps)
    return {"t_c": proto.cut.t_c, "T": proto.cut.T, "mu1": proto.release_mu(shape, 1), "releases": releases,
            "eps_linked": eps_linked, "delta_linked": delta + fail, "u": u,
            "no_hiding": None if u.reason else no_hiding_epsilon(u.mu_per_release, u.sample_rate, cfg.train.steps,
                                                                 delta)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", default=str(ROOT / "configs" / "sweep-default.yaml"))
    ap.add_argument("--cuts", type=float, nargs="*", default=[0.0, 0.2, 0.5, 0.8, 1.0])
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    todo = cells(Path(args.sweep), args.cuts, args.extra)
    cfg0 = todo[0][1]
    data = load_dataset(cfg0.data)
    splits = make_splits(data, cfg0.data, make_secrets(cfg0).split)  # OS secrets: member counts as a run has them
    n_members, shape = [len(m) for m in splits.members], tuple(data.shape)
    f = lambda x, s=".3g": "-" if x is None else ("inf" if math.isinf(x) else format(x, s))  # noqa: E731
    print(f"{cfg0.data.name} {'x'.join(map(str, shape))}, T = {cfg0.diffusion.timesteps}, {cfg0.train.steps} rounds, "
          f"batch {cfg0.train.batch_size} of {min(n_members)}-{max(n_members)} members per client, Poisson sampling, "
          f"delta {view_delta(cfg0):g}")  # fmt: skip
    head = (f"{'cell':26s} {'t_c':>4s} {'mu/release':>10s} {'linked R':>8s} {'linked eps':>10s} "
            f"{'q*P(t>=t_c)':>11s} {'unlinked eps (replace-one)':>26s} {'(add/remove)':>12s} {'no-hiding eps':>13s}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for label, cfg in todo:
        r = row(cfg, n_members, shape)
        u = r["u"]
        print(f"{label:26s} {r['t_c']:>4d} {f(r['mu1'], '.4g'):>10s} {r['releases']:>8d} {f(r['eps_linked']):>10s} "
              f"{f(u.sample_rate, '.4g'):>11s} {f(u.epsilon_replace_one):>26s} {f(u.epsilon_add_remove):>12s} {f(r['no_hiding']):>13s}"
              + (f"  {u.reason}" if u.reason else ""))  # fmt: skip
    print("linked: the server attributes every release to its image (planned bound before training, replace-one, "
          "GDP; delta + the union bound's failure probability); unlinked: the server of our threat model, "
          "dp_accounting PLD of the Poisson-subsampled Gaussian per client and round (defenses/unlinked.py); no-hiding: "
          "replace-one, secret Poisson draws, the target's row told apart from the others' (module docstring)")


if __name__ == "__main__":
    main()
