"""The audit of the unlinked claim (issue 25): the view-only attacks against the unlinked epsilon.

``privacy.json``'s ``unlinked`` epsilon (:mod:`collafuse_privacy.defenses.unlinked`) is a claim
about the server of our threat model: it cannot know in which rounds an image was drawn, but may
recognise the image's row when one is there. Its canary game is the server game of :mod:`.audit`
(replace-one, worst-case or in-distribution canaries) played by the attacks that see only the
view, never the ground-truth links: ``view-lrt`` (one release among all the client's rows, a
nearest-release link scored against a population null, which is also what screens out-of-
distribution canaries) and ``view-composed`` (the mixture over which ``R`` rows are the canary's,
the strongest linking attack we have; fixed noise, whose duplicate rows would link releases
exactly, has no unlinked number to audit). The auditor's known-release test is not one of them: it
is the *linked* server, which the unlinked number does not cover.

One view scores every slot, so only Steinke et al.'s one-run bound is valid for these scores; it is
recomputed here at the unlinked number's own delta. The check fails when any view-only method's
bound exceeds the unlinked epsilon: each bound holds with confidence ``1 - alpha``, so a correct
pipeline fails it with probability at most ``k alpha`` for ``k`` methods (said in the message). The
headline (and the ratio to the formal number) is the method chosen on the calibration slots.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from collafuse_privacy.run.schemas import AuditUnlinked

from . import audit_stats as st

TOLERANCE = 1e-9  # a lower bound exceeds its formal number only beyond rounding


def _over(bound: float, formal: float) -> bool:
    return bound > formal * (1 + TOLERANCE) + TOLERANCE


def max_certifiable_one_run(m: int, delta: float, alpha: float) -> float:
    """The largest one-run bound ``m`` evaluation slots can give (every guess right, over guess counts)."""
    counts = sorted({max(1, m // k) for k in (1, 2, 4, 8, 16, 32)})
    return max((st.one_run_bound(m, r, r, delta, alpha) for r in counts), default=0.0)


def unlinked_check(unlinked, scores: dict[str, np.ndarray], coin: np.ndarray, cal, ev, alpha: float) -> AuditUnlinked:
    """The unlinked claim (``privacy.json``'s ``unlinked``, or None for a file without it) against the
    view-only methods' slot ``scores`` (name -> ``score(x) - score(x')``), coins ``coin``, split into the
    calibration slots ``cal`` and the evaluation slots ``ev``."""
    if unlinked is None or unlinked.epsilon_replace_one is None:
        reason = (unlinked.reason if unlinked is not None else
                  "privacy.json from before the unlinked accountant: rerun `collafuse-privacy privacy`")  # fmt: skip
        return AuditUnlinked(check="not audited", message=f"no unlinked epsilon to audit ({reason})", reason=reason)
    formal, delta = float(unlinked.epsilon_replace_one), float(unlinked.delta)
    runs = {n: st.one_run(np.nan_to_num(np.asarray(s, dtype=np.float64), nan=0.0, posinf=1e300, neginf=-1e300),
                          coin, cal, ev, delta, alpha) for n, s in scores.items()}  # fmt: skip
    top = max_certifiable_one_run(len(ev), delta, alpha)
    if not runs:
        return AuditUnlinked(check="not audited", message="no view-only method gave slot scores", formal_epsilon=formal,
                             delta=delta, reason="no view-only method applicable", max_certifiable_epsilon=top)  # fmt: skip
    bounds = {n: float(o.epsilon) for n, o in runs.items()}
    best = max(runs, key=lambda n: runs[n].calibration)
    lb = bounds[best]
    ratio: Optional[float] = lb / formal if (math.isfinite(formal) and formal > 0) else None
    conf = f"{100 * (1 - alpha):g}%"
    over = sorted(n for n, b in bounds.items() if _over(b, formal))
    if over:
        message = ("FAILED: " + ", ".join(f"{n}'s epsilon >= {bounds[n]:.4g}" for n in over)
                   + f" (one-run, {conf} each) exceed(s) the unlinked epsilon {formal:.4g}: a server without "
                   "ground-truth links learns more than the unlinked accounting allows (or a chance event, "
                   f"probability at most {len(bounds)} x {alpha:g})")  # fmt: skip
    else:
        message = (f"passed: no view-only attack's epsilon lower bound exceeds the unlinked epsilon {formal:.4g} "
                   f"(replace-one, delta {delta:g}); best {best} epsilon >= {lb:.4g} (one-run, {conf}, chosen on "
                   f"the calibration half)" + (f", {ratio:.3f} of the bound" if ratio is not None else "")
                   + f"; {len(ev)} evaluation slots certify at most {top:.3g}")  # fmt: skip
    return AuditUnlinked(check="failed" if over else "passed", message=message, formal_epsilon=formal, delta=delta,
                         bounds=bounds, best=best, epsilon_lb=lb, ratio=ratio, max_certifiable_epsilon=top)  # fmt: skip
