"""White-box DP-SGD audit (eval/audit_dpsgd.py): tight enough on a correct client, and failing on
injected bugs (test-only monkeypatches of Opacus, never product options)."""

import pytest
import torch

from collafuse_privacy.eval import audit_dpsgd as wb

# the audited configuration: full-batch steps, Opacus' epsilon 5.69 at delta 1e-5; 100 runs of 2,000
# canaries each (200,000 in all: the Clopper-Pearson route needs them to resolve rates near 1e-4)
SIGMA, Q, STEPS, RUNS, CANARIES = 0.8, 1.0, 1, 100, 2000


def run(runs=RUNS, **kw):
    return wb.audit_dpsgd(wb.tiny_clients(SIGMA, Q, block=CANARIES), steps=STEPS, runs=runs, canaries=CANARIES,
                          seed=0, **kw)  # fmt: skip


def test_correct_client_is_audited_tightly():
    r = run()
    print(wb.format_white_box(r))
    assert 5.0 < r.opacus_epsilon < 6.5 and r.canaries == RUNS * CANARIES
    assert r.passed  # no route exceeds Opacus' epsilon
    assert r.epsilon == r.cp_epsilon >= 0.5 * r.opacus_epsilon  # the headline, assumption-free route
    assert r.one_run_epsilon > 0.3 * r.opacus_epsilon
    assert r.parametric_epsilon >= 0.5 * r.opacus_epsilon
    assert 0.95 < r.measured_step <= 1.0 and SIGMA <= r.measured_noise < 1.05 * SIGMA


def test_halved_noise_fails(monkeypatch):
    """Bug (a): the optimiser adds half the noise while the accountant counts the configured one."""
    import opacus.optimizers.optimizer as opt

    real = opt._generate_noise
    monkeypatch.setattr(opt, "_generate_noise", lambda std, reference, *a, **k: real(std / 2, reference, *a, **k))
    r = run()
    print(wb.format_white_box(r))
    assert not r.passed
    assert r.cp_epsilon > r.opacus_epsilon  # the assumption-free route sees it too
    assert r.parametric_epsilon > r.opacus_epsilon


def test_skipped_clipping_fails(monkeypatch):
    """Bug (b): per-sample gradients summed without clipping; canaries of 5x the clipping norm pass whole."""
    from opacus.optimizers.optimizer import DPOptimizer, _mark_as_processed

    def no_clip(self):
        for p in self.params:
            g = self._get_flat_grad_sample(p).to(p.dtype).sum(0)
            p.summed_grad = g if p.summed_grad is None else p.summed_grad + g
            _mark_as_processed(p.grad_sample)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", no_clip)
    r = run(runs=10, canary_norm=5.0)
    print(wb.format_white_box(r))
    assert not r.passed
    assert r.cp_epsilon > r.opacus_epsilon and r.parametric_epsilon > r.opacus_epsilon


def test_clipping_cuts_large_canaries():
    """The same 5x canaries through the real clipping: the audit passes (clipping is what it checks)."""
    r = run(runs=10, canary_norm=5.0)
    assert r.passed and r.measured_step <= 1.0


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_canary_block_gets_exact_zero_gradients_from_real_examples():
    """Real examples' per-sample gradients on the canary block are exact zeros, computed by Opacus itself,
    and the block never changes the model's output (what makes the canaries' scores independent)."""
    c = wb.tiny_client(SIGMA, Q, block=50)
    batch = c.sampler.next()
    loss = c.loss_fn_for(batch)(c.dp.module)
    loss.backward()
    gs = c.block.grad_sample
    assert gs.shape == (len(batch), 1, 50) and torch.count_nonzero(gs) == 0
    assert any(torch.count_nonzero(p.grad_sample) for p in c.dp.model.net.parameters())
    x = torch.randn(3, 64)
    with torch.no_grad():
        c.block.normal_()
        assert torch.equal(c.dp.model(x), c.dp.model.net(x))
    assert any(p is c.block for p in c.dp.optimizer.params)  # clipped and noised with the rest


def test_needs_enough_coordinates():
    with pytest.raises(ValueError, match="coordinates"):
        wb.audit_dpsgd(wb.tiny_clients(SIGMA, Q, block=10), steps=1, canaries=11)
