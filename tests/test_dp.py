"""DP-SGD clients (Opacus): per-sample gradients vs a per-example loop for every preset,
zero noise + no clipping == plain training, epsilon == Opacus' accountant, bitwise resume,
target epsilon, config validation."""

import json
import warnings

import pytest
import torch

from collafuse_privacy.config import load_config
from collafuse_privacy.defenses.dp_sgd import DPSGD, contiguous_conv_inputs, grad_sample_module
from collafuse_privacy.diffusion import p_losses
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import load_tensors
from collafuse_privacy.models import PRESETS, build_unet
from collafuse_privacy.party import Party
from collafuse_privacy.training import train

from conftest import tiny_config
from test_training import _assert_same, _final_state, _killed_then_resumed

DP = ["defense.client_dp.enabled=true", "defense.client_dp.log_every=1"]


# ---- per-sample gradients: the attention / channels-last trap -------------------


def _per_sample_check(preset, mode, fix=True):
    """Max relative error of Opacus per-sample gradients against a per-example loop, per
    parameter (float64: key biases of attention have an exactly zero gradient, softmax is
    shift-invariant, so float32 rounding noise would dominate their relative error)."""
    torch.manual_seed(0)
    S = 8 if len(PRESETS[preset]["block_out_channels"]) < 3 else 4
    model = build_unet(preset, S, 1).double()
    B = 3
    x, noise = torch.randn(B, 1, S, S, dtype=torch.float64), torch.randn(B, 1, S, S, dtype=torch.float64)
    t = torch.tensor([3, 50, 97])
    ref = {n: [] for n, _ in model.named_parameters()}
    for i in range(B):
        model.zero_grad()
        p_losses(model, x[i : i + 1], t[i : i + 1], noise[i : i + 1]).sum().backward()
        for n, p in model.named_parameters():
            ref[n].append(p.grad.detach().clone())
    ref = {n: torch.stack(v) for n, v in ref.items()}
    model.zero_grad()
    if fix:
        gsm = grad_sample_module(model, mode, loss_reduction="sum")
    else:
        from opacus.grad_sample.utils import wrap_model

        gsm = wrap_model(model, mode, batch_first=True, loss_reduction="sum")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        p_losses(gsm, x, t, noise).sum().backward()
    scale = max(r.abs().max().item() for r in ref.values())
    errors = {}
    for n, p in model.named_parameters():
        assert p.grad_sample is not None and p.grad_sample.shape == ref[n].shape, n
        denom = max(ref[n].abs().max().item(), 1e-9 * scale)
        errors[n] = (p.grad_sample - ref[n]).abs().max().item() / denom
    return errors


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
@pytest.mark.parametrize("preset", ["micro", "tiny", "small", "base"])
def test_per_sample_gradients_match_a_per_example_loop(preset, mode):
    errors = _per_sample_check(preset, mode)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, f"{preset}/{mode}: {worst} relative error {errors[worst]:.3g}"


def test_hook_mode_without_contiguous_inputs_is_wrong():
    """The trap (DESIGN.md §4): convs fed by an attention block get zero per-sample grads.
    If this starts failing, Opacus fixed unfold2d and the pre-hook could go."""
    errors = _per_sample_check("micro", "hooks", fix=False)
    bad = sorted(n for n, e in errors.items() if e > 1e-4)
    assert bad and all(".conv" in n for n in bad), bad


# ---- DP with zero noise and no clipping == plain training -----------------------


def _party(cfg, dp: bool, batch: int):
    torch.manual_seed(0)
    model = build_unet("micro", 8, 1).double()
    party = Party(model, cfg.train, torch.device("cpu"))
    if dp:
        party.make_private(noise_multiplier=0.0, max_grad_norm=1e10, expected_batch_size=batch, sample_rate=0.5,
                           accountant="rdp", generator=torch.Generator().manual_seed(1))  # fmt: skip
    return party


def test_zero_noise_infinite_clip_equals_plain_training():
    cfg = tiny_config("train.grad_clip=1.0e+10")  # plain path: clipping off as well
    B = 6
    plain, private = _party(cfg, False, B), _party(cfg, True, B)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, noise = torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64)
        t = torch.randint(0, 20, (B,), generator=g)
        la, lb = plain.train_step(x, t, noise), private.train_step(x, t, noise)
        assert la == pytest.approx(lb, rel=1e-12)
    a, b = plain.model.state_dict(), private.model.state_dict()
    assert a.keys() == b.keys() and not any(k.startswith("_module") for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-11, msg=k)
    ea, eb = plain.ema_state_dict(), private.ema_state_dict()
    for k in ea:
        torch.testing.assert_close(eb[k], ea[k], rtol=1e-9, atol=1e-11, msg=k)
    # and with noise the step does differ (the comparison can fail)
    noisy = _party(cfg, True, B)
    noisy.dp.noise_multiplier = 1.0
    noisy.train_step(x, t, noise)
    assert not torch.equal(noisy.model.state_dict()["conv_in.weight"], _party(cfg, False, B).model.state_dict()["conv_in.weight"])


def test_empty_poisson_batch_still_adds_noise_and_counts():
    torch.manual_seed(0)
    model = build_unet("micro", 8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = DPSGD(model, opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, sample_rate=0.1,
               accountant="rdp", generator=torch.Generator().manual_seed(0))  # fmt: skip
    before = model.conv_in.weight.detach().clone()
    assert dp.step(None) is None
    assert not torch.equal(before, model.conv_in.weight) and dp.steps == 1
    assert dp.accountant.history == [(1.0, 0.1, 1)]


def test_contiguous_hook_leaves_outputs_unchanged():
    torch.manual_seed(0)
    model = build_unet("micro", 8, 1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    before = model(x, t).sample
    contiguous_conv_inputs(model)
    torch.testing.assert_close(model(x, t).sample, before, rtol=1e-6, atol=1e-6)


# ---- runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dp")
    cfg = tiny_config(*DP, "defense.client_dp.noise_multiplier=1.3", "train.steps=5")
    train(cfg, run, device="cpu", quiet=True)
    return run


def test_run_epsilon_equals_opacus_accountant(dp_run):
    from opacus.accountants import PRVAccountant

    rep = json.loads((dp_run / "metrics" / "privacy.json").read_text())
    dp = rep["client_dp"]
    splits = json.loads((dp_run / "splits.json").read_text())
    assert dp["enabled"] and dp["accountant"] == "prv" and dp["steps"] == 5
    for c, members in zip(dp["clients"], [s["members"] for s in splits["clients"]]):
        q = 8 / len(members)
        acc = PRVAccountant()
        for _ in range(5):
            acc.step(noise_multiplier=1.3, sample_rate=q)
        assert c["sample_rate"] == pytest.approx(q, abs=1e-12)
        assert c["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-5), abs=1e-6)
    assert dp["epsilon"] == max(c["epsilon"] for c in dp["clients"])
    rows = [json.loads(l) for l in (dp_run / "metrics" / "train.jsonl").read_text().splitlines()]
    eps = [r["client_dp_epsilon"][0] for r in rows]
    assert len(eps) == 5 and eps == sorted(eps) and eps[-1] == pytest.approx(dp["clients"][0]["epsilon"], abs=1e-9)


def test_dp_checkpoints_keep_plain_unet_keys_and_sample(dp_run):
    from collafuse_privacy.sampling import sample_run

    ck = dp_run / "checkpoints"
    d = ck / json.loads((ck / "latest.json").read_text())["dir"]
    plain = build_unet("micro", 8, 1).state_dict().keys()
    for name in ("client-0.safetensors", "client-0_ema.safetensors"):
        assert load_tensors(d / name).keys() == plain
    info = sample_run(dp_run, n=2, device="cpu")
    assert info["n"] == 2


def test_dp_resume_equals_uninterrupted_bitwise(tmp_path):
    cfg = tiny_config(*DP, "defense.client_dp.noise_multiplier=0.8", "defense.client_dp.log_every=2", "train.steps=6",
                      "train.checkpoint_every=3")
    train(cfg, tmp_path / "straight", device="cpu", quiet=True)

    _killed_then_resumed(cfg, tmp_path / "resumed")
    _assert_same(_final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed"))
    a, b = [json.loads((tmp_path / r / "metrics" / "privacy.json").read_text()) for r in ("straight", "resumed")]
    assert a == b and a["client_dp"]["steps"] == 6


def test_target_epsilon_sets_the_noise_and_refuses_more_rounds(tmp_path):
    over = [*DP, "defense.client_dp.target_epsilon=3.0", "defense.client_dp.accountant=rdp", "train.steps=4"]
    train(tiny_config(*over), tmp_path, device="cpu", quiet=True)
    dp = json.loads((tmp_path / "metrics" / "privacy.json").read_text())["client_dp"]
    assert dp["epsilon"] <= 3.0 and dp["epsilon"] > 2.9  # Opacus' bisection: within 0.01 below
    assert dp["target_epsilon"] == 3.0
    with pytest.raises(UserError, match="target_epsilon=3.*refusing"):
        train(tiny_config(*over[:-1], "train.steps=40"), tmp_path, device="cpu", quiet=True)


@pytest.mark.parametrize(
    "override, words",
    [
        (["defense.client_dp.noise_multiplier=1", "defense.client_dp.target_epsilon=2"], "exclude each other"),
        ([], "needs 'defense.client_dp.noise_multiplier'"),
        (["defense.client_dp.noise_multiplier=-1"], "noise_multiplier"),
        (["defense.client_dp.noise_multiplier=1", "defense.client_dp.grad_sample_mode=ew"], "grad_sample_mode"),
        (["defense.client_dp.noise_multiplier=1", "defense.client_dp.accountant=gdp"], "accountant"),
        (["defense.client_dp.noise_multiplier=1", "defense.client_dp.log_every=0"], "log_every"),
    ],
)
def test_dp_config_validation(override, words):
    with pytest.raises(UserError, match=words):
        load_config(None, ["defense.client_dp.enabled=true", *override])


def test_dp_off_keys_are_ignored():
    cfg = load_config(None, ["defense.client_dp.noise_multiplier=1", "defense.client_dp.target_epsilon=2"])
    assert not cfg.defense.client_dp.enabled
