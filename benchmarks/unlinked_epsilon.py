"""Both formal numbers of the server's view, side by side, for a sweep's cells without training.

    .venv/bin/python benchmarks/unlinked_epsilon.py [--sweep configs/sweep-default.yaml] [--cuts 0 0.2 0.5 0.8 1]
        [--set KEY=VALUE ...]

Each cell is the sweep's base config (its ``config:`` file with ``base:``) at one cut ratio, plus the
sweep's ``include:`` cells, with OS secrets (``secrets.derive_from_seed=false``: the unlinked number
assumes them; the demo itself derives its secrets from the seed, so its report refuses the unlinked
number) and any ``--set``, once with ``train.sampling=poisson`` and once with shuffled epochs. The data
are loaded and split as a run would (members per client), nothing is trained. Printed per cell:

* linked epsilon (replace-one, GDP): the planned bound before training, the most draws any member
  can get in ``train.steps`` rounds (Poisson: a union bound, its failure probability added to delta;
  shuffle: the epochs bound), composed as that many Gaussian releases. A trained run's
  ``privacy.json`` counts the releases instead (smaller: only draws beyond the cut are sent).
* unlinked epsilon (``defenses/unlinked.py``, what ``privacy.json`` reports): the secret-sampling
  bound, replace-one, for a server that cannot know in which rounds an image was drawn but may
  recognise its row when present; ``n`` chances (rounds, or the epochs bound with shuffled batches)
  of probability ``p`` each; for the client whose number is largest. Add/remove: infinite (a row's
  presence reveals the image).
* the hiding-assumption column, Poisson only: dp_accounting's ``PoissonSampledDpEvent(p,
  GaussianDpEvent(1 / mu))`` in its PLD accountant (replace-one / add-remove), the *sum* form where
  an image not drawn contributes pure noise at the same place. It is what the number would be *if*
  the other rows hid the target's (a shuffle-model assumption, not proven); it is **not a bound**
  for our protocol, where an image not drawn sends no row (at c = 0.5 the exact pair needs a larger
  epsilon). It needs dp-accounting, the ``test`` extra; without it the column says so.
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
    common += ["secrets.derive_from_seed=false", *extra]
    grid = list(cuts) if cuts else list(spec["grid"]["protocol.cut_ratio"])
    out = [(f"c = {c:g}", from_dict(apply_overrides(base, common + [f"protocol.cut_ratio={c}"]))) for c in grid]
    for inc in spec.get("include", []):
        over = [f"{k}={v}" for k, v in inc.items()]
        label = "c = {:g}, DP-SGD clients".format(inc["protocol.cut_ratio"]) if any(
            "client_dp.enabled" in k for k in inc) else ", ".join(over)  # fmt: skip
        out.append((label, from_dict(apply_overrides(base, common + over))))
    return out


def sum_form_epsilons(mu: float, rate: float, rounds: int, delta: float):
    """The hiding-assumption column: dp_accounting's Poisson-subsampled Gaussian (sum form), replace-one and
    add/remove; None without dp-accounting. Not a bound for our protocol (module docstring)."""
    try:
        import dp_accounting
        from dp_accounting.pld import pld_privacy_accountant
    except ImportError:
        return None
    if mu == 0 or rate == 0 or rounds == 0:
        return 0.0, 0.0
    if math.isinf(mu):
        return math.inf, math.inf
    out = []
    for rel in (dp_accounting.NeighboringRelation.REPLACE_ONE, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE):
        acc = pld_privacy_accountant.PLDAccountant(rel, value_discretization_interval=min(max(1e-4, 1e-4 * mu * mu), 0.1))
        acc.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(1.0 / mu)), int(rounds))
        out.append(float(acc.get_epsilon(delta)))
    return tuple(out)


def row(cfg, n_members: list[int], shape) -> dict:
    proto, delta = protocol_for(cfg), view_delta(cfg)
    releases, fail = planned_releases(cfg, n_members)
    mu_linked, eps_linked = proto.view_privacy(shape, releases, delta)
    u = unlinked_privacy(cfg, shape, n_members, cfg.train.steps)
    hiding = None
    if u.reason is None and u.sampling == "poisson":
        hiding = sum_form_epsilons(u.mu_per_release, u.sample_rate, cfg.train.steps, delta)
    return {"t_c": proto.cut.t_c, "T": proto.cut.T, "mu1": proto.release_mu(shape, 1), "releases": releases,
            "eps_linked": eps_linked, "delta_linked": delta + fail, "u": u, "hiding": hiding}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", default=str(ROOT / "configs" / "sweep-default.yaml"))
    ap.add_argument("--cuts", type=float, nargs="*", default=[0.0, 0.2, 0.5, 0.8, 1.0])
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    f = lambda x, s=".3g": "-" if x is None else ("inf" if math.isinf(x) else format(x, s))  # noqa: E731
    try:
        import dp_accounting  # noqa: F401
    except ImportError:
        print("dp-accounting is not installed (pip install -e '.[test]'): the hiding-assumption column is left empty")
    for sampling in ("poisson", "shuffle"):
        todo = cells(Path(args.sweep), args.cuts, [f"train.sampling={sampling}", *args.extra])
        cfg0 = todo[0][1]
        data = load_dataset(cfg0.data)
        splits = make_splits(data, cfg0.data, make_secrets(cfg0).split)  # OS secrets: member counts as a run has them
        n_members, shape = [len(m) for m in splits.members], tuple(data.shape)
        print(f"\n{sampling} sampling: {cfg0.data.name} {'x'.join(map(str, shape))}, T = {cfg0.diffusion.timesteps}, "
              f"{cfg0.train.steps} rounds, batch {cfg0.train.batch_size} of {min(n_members)}-{max(n_members)} members "
              f"per client, delta {view_delta(cfg0):g}")  # fmt: skip
        head = (f"{'cell':26s} {'t_c':>4s} {'mu/release':>10s} {'linked R':>8s} {'linked eps':>10s} {'n':>5s} "
                f"{'p':>8s} {'unlinked eps (replace-one)':>26s} {'(add/remove)':>12s}"
                + (f"  {'if the other rows hid the target (not a bound): r-o / a-r':>30s}" if sampling == "poisson" else ""))  # fmt: skip
        print(head)
        print("-" * len(head))
        for label, cfg in todo:
            if sampling == "shuffle" and cfg.client_sampling != "shuffle":
                continue  # DP-SGD clients draw Poisson batches whatever train.sampling says: in the first table
            r = row(cfg, n_members, shape)
            u, h = r["u"], r["hiding"]
            line = (f"{label:26s} {r['t_c']:>4d} {f(r['mu1'], '.4g'):>10s} {r['releases']:>8d} {f(r['eps_linked']):>10s} "
                    f"{'-' if u.chances is None else u.chances:>5} {f(u.sample_rate, '.4g'):>8s} "
                    f"{f(u.epsilon_replace_one):>26s} {f(u.epsilon_add_remove):>12s}")  # fmt: skip
            if sampling == "poisson":
                line += f"  {'-' if h is None else f(h[0]) + ' / ' + f(h[1]):>30s}"
            print(line + (f"  {u.reason}" if u.reason else ""))
    print("\nlinked: the server attributes every release to its image (planned bound before training, replace-one, "
          "GDP). unlinked: the server cannot know in which rounds an image was drawn but may recognise its row when "
          "present: the secret-sampling bound sum_k Binom(k; n, p) delta_GDP(eps; sqrt(k) mu), replace-one (what "
          "privacy.json reports); add/remove infinite: a row's presence reveals the image. Last column: dp_accounting's "
          "Poisson-subsampled Gaussian (sum form), valid only if the other rows hid the target's, a shuffle-model "
          "assumption this package does not prove: not a bound.")


if __name__ == "__main__":
    main()
