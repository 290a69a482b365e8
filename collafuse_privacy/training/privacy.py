"""The formal privacy a training run spends: its DP-SGD clients' epsilon as it trains (logged,
and refused past ``defense.client_dp.target_epsilon``), and ``metrics/privacy.json`` at the end
(``defenses/privacy.py`` computes it)."""

from __future__ import annotations

from ..config import Config
from ..defenses.accounting import dp_sgd_epsilon
from ..defenses.privacy import compute_privacy
from ..errors import UserError
from ..run.directory import RunDir
from .parties import Client


class DPClients:
    """The DP-SGD clients of a run: the epsilon each has spent (memoised on its accountant's history)."""

    def __init__(self, cfg: Config, clients: list[Client]):
        self.cfg, self.clients = cfg, clients
        self._cache: dict = {}

    def check_budget(self, step: int) -> None:
        """Refuse to train past ``defense.client_dp.target_epsilon`` (``step``: rounds done)."""
        dp = self.cfg.defense.client_dp
        if dp.target_epsilon is None:
            return
        remaining = max(0, self.cfg.train.steps - step)
        for c in self.clients:
            d = c.party.dp
            eps = dp_sgd_epsilon(d.accountant.history + [(d.noise_multiplier, d.sample_rate, remaining)], dp.delta,
                                 dp.accountant)  # fmt: skip
            if eps > dp.target_epsilon * (1 + 1e-9):
                raise UserError(
                    f"defense.client_dp.target_epsilon={dp.target_epsilon:g}: training client {c.k} to "
                    f"{self.cfg.train.steps} rounds at the run's noise multiplier {d.noise_multiplier:.4g} would spend "
                    f"epsilon={eps:.4g}; refusing (keep train.steps at most what the run started with, "
                    "or start a new run)"
                )

    def epsilons(self) -> list[float]:
        """Epsilon spent so far by each DP client."""
        dp = self.cfg.defense.client_dp
        out = []
        for c in self.clients:
            key = (tuple(c.party.dp.accountant.history), dp.delta, dp.accountant)
            if key not in self._cache:
                self._cache[key] = c.party.dp.epsilon(dp.delta)
            out.append(self._cache[key])
        return out


def write_privacy(rd: RunDir, cfg: Config, shape: tuple, cut_choice, clients: list[Client], steps: int, *,
                  counts_complete: bool, dp_on: bool):  # fmt: skip
    """``metrics/privacy.json``: formal epsilon of the server's view and of DP clients."""
    report = compute_privacy(
        cfg, shape, cut_choice=cut_choice,
        release_counts=[c.releases.counts for c in clients] if counts_complete else None,
        dp_states=[c.party.dp.state_dict() for c in clients] if dp_on else None,
        n_members=[len(c.ids) for c in clients], steps=steps)  # fmt: skip
    rd.write_metrics("privacy", report)
    return report
