"""Per-image MSE / PSNR / SSIM on known pairs; LPIPS offline with generated backbone weights, and without."""

import math

import pytest
import torch
import torchvision
from torchmetrics.functional.image import structural_similarity_index_measure

from collafuse_privacy.errors import UserError
from collafuse_privacy.eval.similarity import (
    DATA_RANGE,
    image_similarity,
    load_lpips,
    lpips_backbone_path,
    lpips_distance,
    lpips_status,
    mse,
    psnr,
    ssim,
)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=g) - 0.5  # inside [-1, 1] with room for noise


def test_identical_images(images):
    assert torch.equal(mse(images, images), torch.zeros(6))
    assert torch.isinf(psnr(images, images)).all() and (psnr(images, images) > 0).all()
    assert torch.allclose(ssim(images, images), torch.ones(6), atol=1e-6)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_gaussian_noise_of_known_variance(images, sigma):
    g = torch.Generator().manual_seed(1)
    noisy = images + sigma * torch.randn(images.shape, generator=g)
    m, p = mse(noisy, images), psnr(noisy, images)
    assert m.shape == p.shape == (6,)
    # Exact given the realised MSE, and close to the nominal variance (3072 pixels per image:
    # the realised MSE is within a few % of sigma^2, i.e. about 0.1 dB).
    assert torch.allclose(p, 10 * torch.log10(DATA_RANGE**2 / m), rtol=1e-5)
    assert torch.allclose(p, torch.full((6,), 10 * math.log10(DATA_RANGE**2 / sigma**2)), atol=0.3)
    s = ssim(noisy, images)
    assert ((s > 0) & (s < 1)).all()


def test_ssim_decreases_with_noise(images):
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(images.shape, generator=g)
    scores = [float(ssim(images + s * noise, images).mean()) for s in (0.0, 0.05, 0.2, 0.5)]
    assert scores == sorted(scores, reverse=True)


def test_ssim_of_constant_images_is_the_luminance_term():
    # For flat images variances and covariance vanish, leaving (2 mx my + C1) / (mx^2 + my^2 + C1),
    # with means taken on the [0, 1] scale SSIM is computed on and C1 = (0.01 * 1)^2.
    a, b = 0.3, -0.4
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    ma, mb, c1 = (a + 1) / 2, (b + 1) / 2, 0.01**2
    expected = (2 * ma * mb + c1) / (ma * ma + mb * mb + c1)
    assert float(ssim(x, y)) == pytest.approx(expected, rel=1e-3)  # float32 round-off in the variances


def test_ssim_is_the_unit_range_convention(images):
    g = torch.Generator().manual_seed(3)
    noisy = images + 0.1 * torch.randn(images.shape, generator=g)
    # Same as SSIM of the 8-bit-scale images with range 255 (SSIM is scale-invariant) ...
    u8 = structural_similarity_index_measure((noisy + 1) * 127.5, (images + 1) * 127.5, data_range=255.0,
                                             reduction="none")  # fmt: skip
    assert torch.allclose(ssim(noisy, images), u8, atol=1e-4)
    # ... but not shift-invariant: on [-1, 1] directly it would differ.
    raw = structural_similarity_index_measure(noisy, images, data_range=2.0, reduction="none")
    assert (raw - ssim(noisy, images)).abs().min() > 0.01


def test_mismatched_shapes_rejected(images):
    with pytest.raises(ValueError):
        mse(images, images[:2])


# ---------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------


def test_lpips_absent_is_reported_not_substituted(empty_hub, images):
    status = lpips_status("alex")
    assert not status.available and "not in the torch hub cache" in status.reason
    assert status.backbone_path == str(empty_hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    out = image_similarity(images, images)
    assert out.lpips is None and out.lpips_note == status.reason
    assert out.mse.shape == out.psnr.shape == out.ssim.shape == (6,)
    with pytest.raises(UserError, match="not in the torch hub cache"):
        load_lpips("alex")
    with pytest.raises(UserError, match="known: alex, vgg, squeeze"):
        lpips_backbone_path("resnet")


def test_lpips_with_generated_backbone_weights(empty_hub):
    path = lpips_backbone_path("alex")
    path.parent.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(state, path)
    assert lpips_status("alex").available

    model = load_lpips("alex")
    # The cached backbone is what the model runs, not random init.
    assert torch.equal(getattr(model.net.slice1, "0").weight, state["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").weight, state["features.10.weight"])

    grey = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1  # grey and small: repeated to RGB, upsampled to 64
    other = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    same = lpips_distance(grey, grey, model)
    diff = lpips_distance(grey, other, model)
    assert same.shape == diff.shape == (4,)
    assert torch.allclose(same, torch.zeros(4), atol=1e-6) and (diff > 0).all()

    out = image_similarity(grey, other)
    assert out.lpips is not None and torch.allclose(out.lpips, diff)
    assert "alex" in out.lpips_note and "upsampled" in out.lpips_note
    assert image_similarity(grey, other, lpips_net=None).lpips is None


def test_lpips_corrupt_backbone_is_a_user_error(empty_hub):
    path = lpips_backbone_path("alex")
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="do not load"):
        load_lpips("alex")
