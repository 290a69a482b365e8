"""FID / KID / disclosure figures against independent numpy-scipy references; feature extractors offline."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn

from collafuse_privacy.config import DataConfig
from collafuse_privacy.data import load_dataset, make_splits
from collafuse_privacy.errors import UserError
from collafuse_privacy.eval import features as feat
from collafuse_privacy.eval.features import (
    ClassifierSpec,
    FeatureExtractor,
    InceptionFeatures,
    classifier_key,
    extractor_split,
    extract_features,
    get_extractor,
    inception_available,
    inception_weights_path,
    load_or_train_classifier,
)
from collafuse_privacy.eval.quality import (
    compute_fid,
    compute_kid,
    disclosure_figures,
    fid_interval,
    frechet_distance,
    kid_interval,
    mean_pairwise_mse,
    pairwise_mse,
    resample_counts,
)


class LinearFeatures(FeatureExtractor):
    """A fixed random projection of the pixels: a cheap, exact stand-in extractor for reference checks."""

    def __init__(self, in_dim: int, dim: int = 8):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim, dtype=torch.float64)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.proj.weight.copy_(torch.randn(dim, in_dim, generator=g, dtype=torch.float64))
            self.proj.bias.copy_(torch.randn(dim, generator=g, dtype=torch.float64))
        self.name = "linear-test"
        self.num_features = dim

    def forward(self, images):
        return self.proj(images.flatten(1).double())


@pytest.fixture
def sets():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(300, 1, 4, 4, generator=g) * 2 - 1
    fake = (torch.rand(250, 1, 4, 4, generator=g) * 2 - 1) * 0.7 + 0.1
    return fake, real, LinearFeatures(16)


def _np_features(ext, x):
    with torch.no_grad():
        return ext(x).numpy().astype(np.float64)


# ---------------------------------------------------------------------------
# FID / KID against references
# ---------------------------------------------------------------------------


def test_fid_matches_scipy(sets):
    fake, real, ext = sets
    got = compute_fid(fake, real, ext, batch_size=64)
    f1, f2 = _np_features(ext, real), _np_features(ext, fake)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert got.fid == pytest.approx(ref, rel=1e-3)
    assert (got.n_real, got.n_fake, got.extractor) == (300, 250, "linear-test")


def _mmd_unbiased(x, y, degree=3):
    """Unbiased MMD^2 with k(a, b) = (a.b / D + 1)^degree; x, y have the same size m."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** degree, ((y @ y.T) / d + 1) ** degree, ((x @ y.T) / d + 1) ** degree
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    )


def test_kid_matches_unbiased_mmd_over_subsets(sets):
    fake, real, ext = sets
    got = compute_kid(fake, real, ext, subsets=7, subset_size=50, seed=3)
    f_real, f_fake = _np_features(ext, real), _np_features(ext, fake)
    # torchmetrics draws, per subset, a permutation of the real then of the generated features
    # from the global RNG; compute_kid seeds it with `seed`.
    torch.manual_seed(3)
    scores = []
    for _ in range(7):
        pr, pf = torch.randperm(len(real)).numpy()[:50], torch.randperm(len(fake)).numpy()[:50]
        scores.append(_mmd_unbiased(f_real[pr], f_fake[pf]))
    assert got.kid_mean == pytest.approx(np.mean(scores), rel=1e-3)
    assert got.kid_std == pytest.approx(np.std(scores), rel=1e-3)
    assert got.subset_size == 50 and got.note == "" and got.extractor == "linear-test"


def test_kid_subset_size_adapts_to_small_sets(sets):
    fake, real, ext = sets
    got = compute_kid(fake[:40], real[:60], ext, subsets=5)
    assert got.subset_size == 40 and "lowered from 1000 to 40" in got.note
    # A subset of the whole smaller set: KID of that set against random 40 of the other.
    f_real, f_fake = _np_features(ext, real[:60]), _np_features(ext, fake[:40])
    torch.manual_seed(0)
    scores = []
    for _ in range(5):
        pr, pf = torch.randperm(60).numpy()[:40], torch.randperm(40).numpy()
        scores.append(_mmd_unbiased(f_real[pr], f_fake[pf]))
    assert got.kid_mean == pytest.approx(np.mean(scores), rel=1e-3)


def test_kid_reproducible_and_leaves_global_rng_alone(sets):
    fake, real, ext = sets
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = compute_kid(fake, real, ext, subsets=4, subset_size=30)
    after = torch.rand(1)
    b = compute_kid(fake, real, ext, subsets=4, subset_size=30)
    assert before == after
    assert a == b


def test_fid_kid_need_two_images(sets):
    fake, real, ext = sets
    with pytest.raises(ValueError):
        compute_fid(fake[:1], real, ext)
    with pytest.raises(ValueError):
        compute_kid(fake, real[:1], ext)


# ---------------------------------------------------------------------------
# Bootstrap intervals
# ---------------------------------------------------------------------------


def test_replicate_formulas_match_the_point_estimates(sets):
    """With every row drawn once, the batched replicate formulas give torchmetrics' FID and the
    unbiased MMD^2 of the numpy reference."""
    fake, real, ext = sets
    f_fake, f_real = ext(fake).detach(), ext(real).detach()
    ones = lambda n: torch.ones(1, n, dtype=torch.float64)  # noqa: E731
    from collafuse_privacy.eval.quality import _weighted_moments

    mu1, s1 = _weighted_moments(f_real, ones(len(f_real)))
    mu2, s2 = _weighted_moments(f_fake, ones(len(f_fake)))
    got = frechet_distance(mu1 + f_real.mean(0), s1, mu2 + f_fake.mean(0), s2)
    assert float(got) == pytest.approx(compute_fid(fake, real, ext, n_boot=0).fid, rel=1e-9)
    c = resample_counts(7, 50, torch.Generator().manual_seed(0))
    assert c.shape == (50, 7) and (c.sum(1) == 7).all()


@pytest.mark.parametrize("n_boot", [200])
def test_intervals_contain_the_estimate_and_shrink_with_n(sets, n_boot):
    fake, real, ext = sets
    widths = {}
    for n in (30, 240):
        fid = compute_fid(fake[:n], real[:n], ext, n_boot=n_boot, seed=1)
        kid = compute_kid(fake[:n], real[:n], ext, subsets=10, subset_size=n, seed=1, n_boot=n_boot)
        for name, value, ci in (("fid", fid.fid, fid.ci), ("kid", kid.kid_mean, kid.ci)):
            assert ci.lo <= value <= ci.hi and ci.lo < ci.hi and ci.n_boot == n_boot and ci.level == 0.95
            widths[name, n] = ci.hi - ci.lo
    assert widths["fid", 240] < 0.6 * widths["fid", 30]
    assert widths["kid", 240] < 0.6 * widths["kid", 30]
    # Seeded: the same call gives the same interval; another seed another one.
    assert compute_fid(fake, real, ext, n_boot=50, seed=1).ci == compute_fid(fake, real, ext, n_boot=50, seed=1).ci
    assert compute_fid(fake, real, ext, n_boot=50, seed=1).ci != compute_fid(fake, real, ext, n_boot=50, seed=2).ci
    assert compute_fid(fake, real, ext, n_boot=0).ci is None


def test_interval_covers_the_spread_of_fresh_draws():
    """The interval's width is that of the figure over fresh draws of as many images (what it claims)."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g, dtype=torch.float64)
    fids = []
    for _ in range(60):
        fake = torch.randn(60, 4, generator=g, dtype=torch.float64) * 1.2 + 0.3
        mu1, s1, mu2, s2 = real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T)
        fids.append(float(frechet_distance(mu1, s1, mu2, s2)))
    fresh = np.quantile(fids, [0.025, 0.975])
    iv = fid_interval(fids[0], fake, real, n_boot=300)
    assert 0.5 < (iv.hi - iv.lo) / (fresh[1] - fresh[0]) < 2.0
    kiv = kid_interval(0.0, fake, real, n_boot=300)
    assert kiv.lo < 0 < kiv.hi


def test_intervals_are_independent_of_the_thread_count(sets):
    fake, real, ext = sets
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = fid_interval(1.0, ext(fake).detach(), ext(real).detach(), n_boot=100), \
            kid_interval(0.0, ext(fake).detach(), ext(real).detach(), n_boot=100)
        torch.set_num_threads(2)
        b = fid_interval(1.0, ext(fake).detach(), ext(real).detach(), n_boot=100), \
            kid_interval(0.0, ext(fake).detach(), ext(real).detach(), n_boot=100)
    finally:
        torch.set_num_threads(before)
    assert a == b


# ---------------------------------------------------------------------------
# Disclosure figures
# ---------------------------------------------------------------------------


def test_pairwise_mse_matches_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 1, 4, 4, generator=g), torch.rand(5, 1, 4, 4, generator=g) * 2 - 1
    a64, b64 = a.double(), b.double()
    rows = [[float(((a64[i] - b64[j]) ** 2).mean()) for j in range(5)] for i in range(7)]
    loop = torch.tensor(rows, dtype=torch.float64)
    assert torch.allclose(pairwise_mse(a, b), loop, rtol=1e-9, atol=1e-12)
    assert mean_pairwise_mse(a, b) == pytest.approx(float(loop.mean()), rel=1e-9)
    assert pairwise_mse(a, a).diagonal().abs().max() < 1e-12


def test_disclosure_figures(sets):
    fake, real, ext = sets
    out = disclosure_figures(fake, real, ext, kid_subsets=3, kid_subset_size=20)
    assert out.pixel_mse == pytest.approx(float(pairwise_mse(fake, real).mean()), rel=1e-9)
    assert out.kid.extractor == "linear-test" and out.kid.subset_size == 20
    assert (out.n_server, out.n_client) == (250, 300)
    assert json.dumps(out.to_dict())


# ---------------------------------------------------------------------------
# Offline classifier (digits: fast; mnist5k: the acceptance numbers)
# ---------------------------------------------------------------------------

FAST = ClassifierSpec(width=16, feature_dim=16, steps=100)


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(name="digits", image_size=8, clients=2)
    ds = load_dataset(cfg)
    return ds, make_splits(ds, cfg, seed=0)


def test_extractor_split_is_fixed_by_image_id_and_disjoint():
    train, test = extractor_split(1797)
    assert len(test) == 180 and len(train) == 1797 - 180 and not set(train) & set(test)
    assert sorted(train + test) == list(range(1797))
    assert extractor_split(1797) == (train, test)  # no run's split or seed enters it
    assert extractor_split(1797, seed=1) != (train, test)


def test_classifier_trains_caches_and_invalidates(digits, tmp_path, monkeypatch):
    ds, sp = digits
    train, test = extractor_split(len(ds))
    cache = tmp_path / "cls"
    first = load_or_train_classifier(ds, train, test, FAST, cache_dir=cache)
    assert not first.from_cache and first.test_accuracy > 0.9
    meta = json.loads((cache / f"{first.key}.json").read_text())
    assert meta["test_accuracy"] == first.test_accuracy and meta["n_train"] == len(train)
    assert (cache / f"{first.key}.safetensors").is_file()
    assert meta["sha256"] == first.sha256 == feat.sha256_file(cache / f"{first.key}.safetensors")
    assert first.sha256[:12] in first.name

    again = load_or_train_classifier(ds, train, test, FAST, cache_dir=cache)
    assert again.from_cache and again.key == first.key and again.name == first.name and again.sha256 == first.sha256
    x = ds.images[:32]
    assert torch.equal(again(x), first(x)) and again(x).dtype == torch.float64 and again(x).shape == (32, 16)

    # Anything that determines the classifier changes the key: spec (retrained to a new entry), split, data.
    other = load_or_train_classifier(ds, train, test, dataclasses.replace(FAST, seed=1), cache_dir=cache)
    assert not other.from_cache and other.key != first.key
    assert len(list(cache.glob("*.safetensors"))) == 2
    flipped = dataclasses.replace(ds, images=ds.images.flip(-1))
    keys = {first.key, classifier_key(ds, train[:-1], test, FAST), classifier_key(flipped, train, test, FAST),
            classifier_key(ds, train, test[1:], FAST)}  # fmt: skip
    assert len(keys) == 4

    # Deterministic: retraining in a fresh cache gives the same weights bit for bit.
    fresh = load_or_train_classifier(ds, train, test, FAST, cache_dir=tmp_path / "fresh")
    assert torch.equal(fresh(x), first(x)) and fresh.sha256 == first.sha256

    # An entry whose bytes do not hash to its recorded sha256 is retrained, not trusted.
    w = cache / f"{first.key}.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    redone = load_or_train_classifier(ds, train, test, FAST, cache_dir=cache)
    assert not redone.from_cache and redone.sha256 == first.sha256

    # The env var moves the default cache.
    monkeypatch.setenv("COLLAFUSE_CACHE", str(tmp_path / "env"))
    assert feat.default_cache_dir() == tmp_path / "env" / "classifiers"


def test_classifier_rejects_unlabelled_data(digits, tmp_path):
    ds, sp = digits
    flat = dataclasses.replace(ds, labels=torch.zeros_like(ds.labels))
    with pytest.raises(UserError, match="2\\+ classes"):
        load_or_train_classifier(flat, *extractor_split(len(ds)), FAST, cache_dir=tmp_path)


def test_get_extractor_auto_falls_back_to_classifier(digits, empty_hub, tmp_path):
    ds, sp = digits
    assert not inception_available()
    ext, note = get_extractor("auto", dataset=ds, spec=FAST, cache_dir=tmp_path)
    assert ext.name.startswith("classifier-digits-8px-")
    assert "Inception weights not in the torch hub cache" in note and ext.name in note and "\n" not in note
    with pytest.raises(UserError, match="Inception weights not in the torch hub cache"):
        get_extractor("inception")
    with pytest.raises(UserError, match="known: auto, inception, classifier"):
        get_extractor("vgg")
    with pytest.raises(UserError, match="needs the dataset"):
        get_extractor("classifier")


@pytest.fixture(scope="module")
def mnist_classifier():
    cfg = DataConfig(name="mnist5k", image_size=16)
    ds = load_dataset(cfg)
    sp = make_splits(ds, cfg, seed=0)
    ext, _ = get_extractor("classifier", dataset=ds)  # the shipped one: no training
    assert ext.source == "shipped"
    return ds, sp, ext


def test_mnist5k_classifier_accuracy(mnist_classifier):
    _, _, ext = mnist_classifier
    assert ext.test_accuracy >= 0.97


def test_mnist5k_fid_real_halves_far_below_noise(mnist_classifier):
    ds, sp, ext = mnist_classifier
    g = torch.Generator().manual_seed(0)
    held = ds.images[sp.holdout[0]]
    held = held[torch.randperm(len(held), generator=g)]  # indices are sorted and mnist5k is ordered by class
    n = len(held) // 2
    members = ds.images[sp.members[0]]
    members = members[torch.randperm(len(members), generator=g)[:n]]
    noise = torch.rand(n, *ds.shape, generator=g) * 2 - 1
    halves = compute_fid(held[:n], held[n : 2 * n], ext).fid
    unseen = compute_fid(members, held[:n], ext).fid  # members against held-out: the FID floor
    vs_noise = compute_fid(noise, held[:n], ext).fid
    assert halves < 0.1 * vs_noise
    assert unseen < 0.1 * vs_noise


def test_mnist5k_classifier_accuracy_at_28(tmp_path):
    cfg = DataConfig(name="mnist5k", image_size=28)
    ds = load_dataset(cfg)
    ext, _ = get_extractor("classifier", dataset=ds, cache_dir=tmp_path)
    assert ext.source == "shipped" and ext.test_accuracy >= 0.97


# ---------------------------------------------------------------------------
# Inception, offline, with generated weights
# ---------------------------------------------------------------------------


def _random_inception_weights(monkeypatch) -> dict:
    """A state dict with torch-fidelity's Inception keys and shapes (random values)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:  # build the architecture without loading anything
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return net.state_dict()


def test_inception_path_with_cached_weights(empty_hub, monkeypatch):
    path = inception_weights_path()
    assert path.parent == empty_hub / "checkpoints" and not inception_available()
    path.parent.mkdir(parents=True)
    torch.save(_random_inception_weights(monkeypatch), path)
    assert inception_available()

    ext, note = get_extractor("auto")
    assert isinstance(ext, InceptionFeatures) and ext.name in note and "inception" in ext.name
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    threads = torch.get_num_threads()
    # One thread: with the other core busy (a demo running beside the tests), multi-threaded
    # 299x299 Inception convolutions on CPU slowed from seconds to minutes.
    torch.set_num_threads(1)
    try:
        f = extract_features(grey, ext)
        assert f.shape == (2, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
        out = compute_fid(grey, torch.rand(2, 1, 16, 16, generator=g) * 2 - 1, ext, n_boot=0)  # D = 2048: see fid_interval
    finally:
        torch.set_num_threads(threads)
    assert out.extractor == ext.name and np.isfinite(out.fid)


def test_inception_weights_that_do_not_fit_are_a_user_error(empty_hub):
    path = inception_weights_path()
    path.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError, match="do not load"):
        InceptionFeatures()
