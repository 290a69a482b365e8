"""Nothing reaches the server but what the protocol sends (DESIGN.md §2): no secret it could
rebuild from its view, no order in a message's rows."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from collafuse_privacy.client_secrets import mix, read_secrets
from collafuse_privacy.data import load_dataset, make_splits
from collafuse_privacy.training import train
from collafuse_privacy.view import ServerView, load_shards

from conftest import tiny_config
from test_training import _assert_same, _final_state, _killed_then_resumed

OS = "secrets.derive_from_seed=false"


def _public_indices(view, ds) -> set:
    """What a server with the public dataset does first: find its public images in the dataset."""
    pub = view.public_images()[0].flatten(1)
    d = torch.cdist(pub.double(), ds.images.flatten(1).double())
    assert float(d.min(1).values.max()) == 0.0  # every public image is in the dataset
    return set(d.argmin(1).tolist())


def _brute_force(view, cfg, ds, tries: int = 300):
    """The attack of issue 12: try seeds (and the seed-derived roots) until the split reproduces
    the public images; return the recovered split or None."""
    target = _public_indices(view, ds)
    candidates = [s for k in range(tries) for s in (k, mix("split", k))]
    for s in candidates:
        sp = make_splits(ds, cfg.data, s)
        if set(sp.public) == target:
            return sp
    return None


def test_os_secrets_defeat_the_brute_force_that_seed_secrets_do_not(tmp_path):
    for derive in ("true", "false"):
        cfg = tiny_config(f"secrets.derive_from_seed={derive}", "seed=7", "train.steps=2", "protocol.fixed_noise=true")
        run = tmp_path / derive
        train(cfg, run, device="cpu", quiet=True)
        view = ServerView.load(run)
        found = _brute_force(view, cfg, load_dataset(cfg.data))
        truth = json.loads((run / "splits.json").read_text())
        if derive == "true":  # the test can fail: with seed-derived secrets the server rebuilds the split exactly
            assert found is not None and found.members == [c["members"] for c in truth["clients"]]
        else:
            assert found is None
            # no file the server holds contains the root secret
            root = str(read_secrets(run).root)
            for f in (run / "server_view").rglob("*"):
                if f.is_file():
                    assert root.encode() not in f.read_bytes(), f


def test_os_secrets_differ_between_runs_and_a_resumed_run_is_bitwise(tmp_path):
    cfg = tiny_config(OS, "train.steps=7", "train.checkpoint_every=3", "protocol.fixed_noise=true")
    train(cfg, tmp_path / "a", device="cpu", quiet=True)
    train(cfg, tmp_path / "other", device="cpu", quiet=True)
    assert read_secrets(tmp_path / "a").root != read_secrets(tmp_path / "other").root
    assert (tmp_path / "a" / "splits.json").read_text() != (tmp_path / "other" / "splits.json").read_text()

    # the same clients, trained again with a kill and a resume (which reads clients/secrets.json back)
    _killed_then_resumed(cfg, tmp_path / "b", secrets=read_secrets(tmp_path / "a"))
    _assert_same(_final_state(tmp_path / "a"), _final_state(tmp_path / "b"))


def test_secret_mode_of_a_run_cannot_be_switched(tmp_path):
    from collafuse_privacy.errors import UserError

    train(tiny_config(OS, "train.steps=2"), tmp_path / "r", device="cpu", quiet=True)
    with pytest.raises(UserError, match="derived from the seed"):
        train(tiny_config("train.steps=2"), tmp_path / "r", device="cpu", quiet=True)


# ---- the order of a message's rows ------------------------------------------------------


def _digit_folder(root):
    """scikit-learn digits as PNGs in one folder per class: dataset ids sorted by label."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(600):
        folder = root / str(int(d.target[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.mark.parametrize("dp", [False, True], ids=["batcher", "poisson-dp"])
def test_message_rows_are_in_an_order_independent_of_label_and_id(tmp_path, dp):
    """Within each message, a row's position carries no information: its rank correlation with the
    image id and with the label is zero within sampling error, over many rounds, for both samplers.
    (Poisson sampling returns positions in ascending order; members are stored sorted by id, and
    this dataset is sorted by label.)"""
    images = _digit_folder(tmp_path / "images")
    over = ["data.name=image-folder", f"data.root={images}", "data.channels=1", "protocol.cut_ratio=0.2",
            "train.steps=40", "train.batch_size=24", "train.checkpoint_every=40"]  # fmt: skip
    if dp:
        over += ["defense.client_dp.enabled=true", "defense.client_dp.noise_multiplier=1.0"]
    cfg = tiny_config(*over)
    run = tmp_path / "run"
    train(cfg, run, device="cpu", quiet=True)
    view = ServerView.load(run)
    ids = load_shards(run / "ground_truth" / "train")["image_id"].numpy()
    labels = load_dataset(cfg.data).labels.numpy()[ids]
    msg = view.messages["round"].numpy() * 1000 + view.messages["client"].numpy()
    pos, rel_id, rel_label = [], [], []
    for m in np.unique(msg):
        rows = np.flatnonzero(msg == m)
        if len(rows) < 3:
            continue
        pos.append(stats.rankdata(np.arange(len(rows))) / len(rows))
        rel_id.append(stats.rankdata(ids[rows]) / len(rows))
        rel_label.append(stats.rankdata(labels[rows]) / len(rows))
    pos, rel_id, rel_label = map(np.concatenate, (pos, rel_id, rel_label))
    n = len(pos)
    assert n > 500
    for what, x in (("id", rel_id), ("label", rel_label)):
        rho = stats.spearmanr(pos, x).statistic
        assert abs(rho) < 4 / np.sqrt(n), f"row order correlates with {what}: rho = {rho:.3f} over {n} rows"
