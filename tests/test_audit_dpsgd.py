"""White-box DP-SGD audit (eval/audit_dpsgd.py): tight enough on a correct client, and failing on
injected bugs (test-only monkeypatches of Opacus, never product options)."""

import pytest

from collafuse_privacy.eval import audit_dpsgd as wb

# a tiny client: Opacus' epsilon about 3.5 at delta 1e-5; the audit takes seconds
SIGMA, Q, STEPS, CANARIES = 1.5, 0.1, 100, 5000


def run(**kw):
    dp, sampler, loss_fn_for = wb.tiny_client(SIGMA, Q, seed=0)
    return wb.audit_dpsgd(dp, sampler, loss_fn_for, steps=STEPS, canaries=CANARIES, seed=0, **kw)


def test_correct_client_is_audited_tightly():
    r = run()
    print(wb.format_white_box(r))
    assert 2.0 < r.opacus_epsilon < 8.0
    assert r.passed
    assert r.one_run_epsilon > 0.3 * r.opacus_epsilon  # the assumption-free route
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
    assert r.one_run_epsilon > r.opacus_epsilon or r.parametric_epsilon > r.opacus_epsilon


def test_skipped_clipping_fails(monkeypatch):
    """Bug (b): per-sample gradients summed without clipping; canaries of 5x the clipping norm pass whole."""
    from opacus.optimizers.optimizer import DPOptimizer, _mark_as_processed

    def no_clip(self):
        for p in self.params:
            g = self._get_flat_grad_sample(p).to(p.dtype).sum(0)
            p.summed_grad = g if p.summed_grad is None else p.summed_grad + g
            _mark_as_processed(p.grad_sample)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", no_clip)
    r = run(canary_norm=5.0)
    print(wb.format_white_box(r))
    assert not r.passed
    assert r.parametric_epsilon > r.opacus_epsilon


def test_clipping_cuts_large_canaries():
    """The same 5x canaries through the real clipping: the audit passes (clipping is what it checks)."""
    r = run(canary_norm=5.0)
    assert r.passed and r.measured_step <= 1.0


def test_needs_enough_coordinates():
    dp, sampler, loss_fn_for = wb.tiny_client(SIGMA, Q)
    with pytest.raises(ValueError, match="coordinates"):
        wb.audit_dpsgd(dp, sampler, loss_fn_for, steps=1, canaries=10**6)
