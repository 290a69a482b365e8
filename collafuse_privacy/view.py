"""The server's view: everything an honest-but-curious server receives, on disk.

Layout inside a run directory::

    server_view/meta.json                 what the server legitimately knows (run.schemas.ViewMeta):
                                          protocol, schedule, t_c, image shape, presets
    server_view/public.safetensors        the server's own public images (and their labels)
    server_view/train/shard-A-B.safetensors   messages received in rounds A..B:
                                          x (x_t or h), client, round, and t, eps, labels
                                          where the protocol sends them
    server_view/handover/sample.safetensors   hand-over images the server produced at
                                          inference, with the client each went to
                                          (its sha256 is in samples/manifest.json)
    server_view/manifest.json             written last at every checkpoint (seal_view): the
                                          round, the rows, the run's identity hash and the
                                          sha256 of every file above but the hand-over
    ground_truth/train/shard-A-B.safetensors  image ids of those rows (evaluation only;
                                          attacks never read ground_truth/ or splits.json)

:class:`ServerView` loads exactly this (plus the server's own checkpoint) and is
the only input attacks get; it never opens the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import check_finite, sha256, step_dirs, verified_step_dir
from .config import config_hash, cut_timestep
from .errors import UserError
from .io import load_tensors, save_tensors
from .models import build_unet, load_unet
from .protocol import Cut, Message, Protocol, make_protocol
from .protocol.fedavg import load_flat
from .run.codec import read_json, write_json
from .run.directory import RunDir
from .run.layout import SERVER, SHARD_RE, SHARDS, TRUTH_TRAIN, VIEW_FILES, VIEW_TRAIN, party_file, shard_name, step_of
from .run.schemas import RecordStats, ViewManifest, ViewMeta


class ViewRecorder:
    """Stores what the server receives, sharded; ids of the rows go to ground truth.

    ``receive(msg)`` is a transport receiver (it sees only the message);
    ``attach_truth(ids)`` is called by the evaluation harness for the same rows.
    At most ``max_items`` rows are kept (the first ones).
    """

    def __init__(self, run_dir: Path, max_items: int, shard_size: int, dtype: str = "float32", truth: bool = True):
        self.rd = RunDir(run_dir)
        self.truth = truth  # False where the ids are not the recorder's to know (a networked server, flower/)
        self.view_dir = Path(run_dir) / VIEW_TRAIN
        self.truth_dir = Path(run_dir) / TRUTH_TRAIN
        self.max_items = max_items
        self.shard_size = shard_size
        self.dtype = getattr(torch, dtype)
        self.count = 0  # rows written or buffered
        self.received = 0  # rows received, recorded or not
        self.round = 0
        self._buf: list[dict[str, torch.Tensor]] = []
        self._ids: list[torch.Tensor] = []
        self._buffered = 0
        self._first_round: Optional[int] = None
        self._last_kept = 0
        self._last_round = 0

    def receive(self, msg: Message) -> None:
        self.received += len(msg)
        keep = max(0, min(len(msg), self.max_items - self.count))
        self._last_kept = keep
        if keep == 0:
            return
        self._buf.append(msg.enveloped(self.round, keep, self.dtype))  # payload + (client, round)
        self.count += keep
        self._buffered += keep
        if self._first_round is None:
            self._first_round = self.round
        self._last_round = self.round

    def attach_truth(self, ids: torch.Tensor) -> None:
        if self._last_kept:
            self._ids.append(ids[: self._last_kept].detach().cpu().to(torch.int64))

    def end_round(self) -> None:
        """Called after each round; writes a shard when the buffer is full."""
        if self._buffered >= self.shard_size:
            self.flush()
        self.round += 1

    def write_stats(self) -> None:
        """``server_view/record.json``: how many received rows were recorded."""
        write_json(self.rd.record_path, RecordStats(received=self.received, recorded=self.count,
                                                    max_items=self.max_items, dtype=str(self.dtype).split(".")[-1]))

    def flush(self) -> None:
        self.write_stats()
        if not self._buf:
            return
        keys = self._buf[0].keys()
        cat = {k: torch.cat([b[k] for b in self._buf]) for k in keys}
        name = shard_name(self._first_round, self._last_round)
        # Ground truth first: a view shard never exists without its ids.
        if self.truth:
            save_tensors(self.truth_dir / name, {"image_id": torch.cat(self._ids)})
        save_tensors(self.view_dir / name, cat)
        self._buf, self._ids, self._buffered, self._first_round = [], [], 0, None

    def state_dict(self) -> dict:
        assert not self._buf, "flush before checkpointing"
        return {"count": self.count, "round": self.round, "received": self.received}

    def load_state_dict(self, state: dict) -> None:
        """Restore, dropping shards written after the checkpoint (an interrupted tail)."""
        self.count, self.round = int(state["count"]), int(state["round"])
        self.received = int(state.get("received", self.count))
        for d in (self.view_dir, self.truth_dir):
            if d.is_dir():
                for f in d.iterdir():
                    m = SHARD_RE.search(f.name)
                    if (m and int(m.group(1)) >= self.round) or f.name.endswith(".tmp"):
                        f.unlink()


def list_shards(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if SHARD_RE.search(f.name))


def load_shards(folder: Path) -> dict[str, torch.Tensor]:
    parts = [load_tensors(f) for f in list_shards(folder)]
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def shard_rows(path: Path) -> int:
    """Rows of a view shard, from its safetensors header (UserError for a damaged file)."""
    import json

    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(min(n, 1 << 20)))
        return int(header["x"]["shape"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{path} is corrupt or truncated (no readable header)") from None


def view_files(rd: RunDir) -> list[str]:
    """The view's files a manifest covers, relative to ``server_view/``."""
    names = [n for n in VIEW_FILES if (rd.view_dir / n).is_file()]
    return names + [f"{SHARDS}/{f.name}" for f in list_shards(rd.view_train_dir)]


def seal_view(run_dir: Path, step: int, rows: int, cfg) -> None:
    """Write ``server_view/manifest.json`` (last, after the checkpoint of round ``step``): the sha256
    of every view file, ``rows`` recorded, the run's identity hash. What ``ServerView.load`` verifies."""

    rd = RunDir(run_dir)
    files = {rel: sha256(rd.view_dir / rel) for rel in view_files(rd)}
    write_json(rd.view_manifest_path, ViewManifest(step=int(step), rows=int(rows), config_hash=config_hash(cfg),
                                                   files=files))  # fmt: skip


RETRAIN = "rerun the same `train` command (it resumes from the last checkpoint and seals the view), or retrain"


def check_meta(meta: ViewMeta, cfg, where: Path) -> None:
    """``meta`` (what the server was told) against the run's resolved config: a view recorded
    under another cut, protocol or schedule is refused, naming the key."""
    want = {"protocol": cfg.protocol.kind, "cut_ratio": cfg.protocol.cut_ratio, "fixed_noise": cfg.protocol.fixed_noise,
            "t_c": cut_timestep(cfg.protocol.cut_ratio, cfg.diffusion.timesteps),
            "timesteps": cfg.diffusion.timesteps, "diffusion": cfg.diffusion,
            "server_conditioning": cfg.model.server_conditioning, "model_preset": cfg.model.preset,
            "client_preset": cfg.model.client_preset, "clients": cfg.data.clients, "data_name": cfg.data.name,
            "server_lr": cfg.train.lr, "server_lr_warmup": cfg.train.lr_warmup,
            "server_grad_clip": cfg.train.grad_clip}  # fmt: skip
    dp_sgd = cfg.defense.client_dp.enabled and want["t_c"] > 0
    for key, value in [*want.items(), ("sampling", cfg.client_sampling)]:
        got = meta.client_sampling(dp_sgd) if key == "sampling" else getattr(meta, key)
        if got != value:
            raise UserError(f"{where} says {key} = {got!r}, the run's config.yaml gives {value!r}: the view was recorded "
                            "under another config (one of the two was edited); restore it or retrain")  # fmt: skip
    if list(meta.shape[1:]) != [cfg.data.image_size] * 2:
        raise UserError(f"{where} says images are {meta.shape}, the run's config.yaml gives size "
                        f"{cfg.data.image_size}; restore it or retrain")  # fmt: skip


def verify_view(rd: RunDir, step: int, cfg=None) -> list[Path]:
    """Check ``server_view/`` against its manifest (written at the checkpoint of round ``step``): every
    file there and unchanged, no shard beside them, the rows those shards hold = the manifest's =
    ``record.json``'s, and (``cfg``) the run's identity hash. Returns the shards to read."""

    path = rd.view_manifest_path
    if not path.is_file():
        raise UserError(f"{rd.view_dir} has no manifest.json (it is written at every checkpoint; the view was never "
                        f"sealed, or it was removed): {RETRAIN}")  # fmt: skip
    man = read_json(path, ViewManifest)
    if man.step != step:
        raise UserError(f"{path} was written at round {man.step}, the checkpoint is of round {step}: the view and the "
                        f"checkpoint are out of step (training was interrupted between them): {RETRAIN}")  # fmt: skip
    if cfg is not None and man.config_hash != config_hash(cfg):
        raise UserError(f"{rd.config_path} is not the config this view was recorded under (its identity hash differs "
                        f"from {path}'s): it was edited after training; restore it or retrain")  # fmt: skip
    listed = {rel for rel in man.files if rel.startswith(f"{SHARDS}/")}
    extra = [f for f in list_shards(rd.view_train_dir) if f"{SHARDS}/{f.name}" not in listed]
    if extra:
        raise UserError(f"{extra[0]} is not in {path}: it was written after the last checkpoint (an interrupted "
                        f"`train`) or added by hand: {RETRAIN}")  # fmt: skip
    for rel, digest in man.files.items():
        f = rd.view_dir / rel
        if not f.is_file():
            raise UserError(f"{f} is missing (listed in {path}): the view is incomplete; restore it or retrain")
        if sha256(f) != digest:
            raise UserError(f"{f} does not match the sha256 in {path} (changed after it was written): the view is "
                            "damaged; restore it or retrain")  # fmt: skip
    shards = [rd.view_dir / rel for rel in sorted(listed)]
    rows = sum(shard_rows(f) for f in shards)
    record = read_json(rd.record_path, RecordStats) if rd.record_path.name in man.files else None
    if rows != man.rows or (record is not None and record.recorded != rows):
        said = f"{man.rows} in {path}" + (f", {record.recorded} in {rd.record_path}" if record is not None else "")
        raise UserError(f"{rd.view_train_dir} holds {rows} rows, {said}: the view is incomplete; retrain")
    return shards


def write_public(run_dir: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The server's public images ``[P, C, H, W]`` in [-1, 1] and labels ``[P]``, into its view."""
    save_tensors(RunDir(run_dir).public_path, {"images": images.float(), "labels": labels.long()})


@dataclass
class ServerView:
    """Everything the server holds, and nothing else.

    ``meta``: protocol, schedule, t_c, shape (:class:`~collafuse_privacy.run.schemas.view.ViewMeta`).
    ``messages``: the received rows (``x`` [N, C, H, W] float32; ``client``, ``round`` [N];
    plus ``t`` and ``eps`` in shared-noise). ``handover``: hand-over images produced at
    inference (``h``, ``client``) or None. ``public``: the server's public images and
    labels. ``server_state``: the server model's weights.
    """

    meta: ViewMeta
    messages: dict[str, torch.Tensor] = field(default_factory=dict)
    handover: Optional[dict[str, torch.Tensor]] = None
    public: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    record: Optional[object] = None  # run.schemas.RecordStats: rows received vs recorded
    server_state: Optional[dict[str, torch.Tensor]] = None
    run_dir: Optional[Path] = None
    released_clients: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    # ---- what the server knows ---------------------------------------------------------
    @cached_property
    def cut(self) -> Cut:
        return Cut(self.meta.diffusion, self.meta.t_c, self.meta.cut_ratio)

    @cached_property
    def protocol(self) -> Protocol:
        return make_protocol(self.meta.protocol, self.cut, self.meta.fixed_noise, self.meta.server_conditioning)

    @property
    def t_c(self) -> int:
        return self.meta.t_c

    @property
    def timesteps(self) -> int:
        return self.meta.timesteps

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.meta.shape

    def public_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The server's public split (DESIGN.md §2): ``(images [P, C, H, W] in [-1, 1], labels [P])``."""
        if self.public is None:
            shape = self.image_shape
            return torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.long)
        return self.public

    def server_model(self, device="cpu"):
        """The server's own denoiser (EMA weights, as used at inference), or None if untrained."""
        if self.server_state is None:
            return None
        return load_unet(self.meta.model_preset, self.image_shape, self.server_state, self.run_dir).to(device)

    def client_model(self, k: int, device="cpu"):
        """Client ``k``'s model: under a protocol whose messages are models (fedavg) its last recorded
        upload, which the server holds; otherwise only if it was released
        (``ServerView.load(..., release_clients=[k])``)."""
        if self.protocol.aggregates:
            return self._uploaded_model(k).to(device)
        if k not in self.released_clients:
            raise UserError(f"client {k}'s model is not part of the server's view (it was not released)")
        preset = self.meta.client_preset or self.meta.model_preset
        return load_unet(preset, self.image_shape, self.released_clients[k], self.run_dir).to(device)

    def upload_round(self, k: int) -> int:
        """The round of client ``k``'s last recorded upload (fedavg); UserError if none was recorded."""
        rows = self._uploads(k)
        return int(self.messages["round"][rows].max())

    def _uploads(self, k: int) -> torch.Tensor:
        if not self.protocol.aggregates:
            raise ValueError(f"the {self.protocol.name} view holds no model uploads")
        rows = torch.nonzero(self.messages["client"] == k).flatten() if self.messages else torch.zeros(0, dtype=torch.long)
        if len(rows) == 0:
            rec = "" if self.record is None else f" ({self.record.recorded} of {self.record.received} rows recorded)"
            raise UserError(f"client {k} has no upload in the server's view{rec}: it is not a client of the run, "
                            "or record.max_items kept none of its uploads")  # fmt: skip
        return rows

    def _uploaded_model(self, k: int):
        """Client ``k``'s last recorded upload as a model (the flattened parameters of the row)."""
        rows = self._uploads(k)
        last = rows[int(torch.argmax(self.messages["round"][rows]))]
        model = build_unet(self.meta.model_preset, int(self.image_shape[-1]), int(self.image_shape[0]))
        load_flat(model, self.messages["x"][last])
        return model.eval()

    @classmethod
    def load(cls, run_dir: str | Path, release_clients: tuple[int, ...] = ()) -> "ServerView":
        """Load the server's view of ``run_dir``.

        ``release_clients``: clients whose trained model (EMA weights) was released to the
        server, the threat model of client-model attacks; by default none is.
        """
        rd = RunDir(run_dir)
        if rd.path.exists() and not rd.path.is_dir():
            raise UserError(f"{rd.path} is a file, not a run directory")
        if not rd.path.is_dir():
            raise UserError(f"run directory does not exist: {rd.path}")
        meta = rd.meta()
        # the harness holds the run's config (a copy of the view alone, as the server keeps it, has none)
        cfg = rd.config() if rd.config_path.exists() else None
        if cfg is not None:
            check_meta(meta, cfg, rd.meta_path)
        # attackable only from an intact checkpoint: a run killed before its first one, or a Flower
        # run not collected yet, has a view of nothing trained
        if rd.latest() is None and not step_dirs(rd):
            raise UserError(f"{rd.path} has no checkpoint: its training never reached one (killed early, or a Flower "
                            "run not collected yet); train it first")  # fmt: skip
        # the server's own model: none at c = 1, the global model under fedavg
        cut = Cut(meta.diffusion, meta.t_c)
        no_model = cut.sends_nothing and not make_protocol(meta.protocol, cut).aggregates
        server = [] if no_model else [party_file(SERVER, ema=True)]
        if make_protocol(meta.protocol, cut).aggregates:
            release_clients = ()  # the clients' uploads are in the view already (client_model reads them)
        files = server + [party_file(k, ema=True) for k in release_clients]
        step_dir, _ = verified_step_dir(rd, files)  # the files read here match the checkpoint's manifest
        shards = verify_view(rd, step_of(step_dir.name), cfg)
        parts = [load_tensors(f) for f in shards]
        msgs = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        msgs = {k: (v.float() if v.is_floating_point() else v) for k, v in msgs.items()}
        ho_path = rd.handover_path
        handover = load_tensors(ho_path) if ho_path.is_file() else None
        public = None
        if rd.public_path.is_file():
            p = load_tensors(rd.public_path)
            public = (p["images"], p["labels"])
        server_state, released = None, {}
        if server:
            server_state = load_tensors(step_dir / server[0])
            check_finite(server_state, step_dir / server[0])
        for k in release_clients:
            released[int(k)] = load_tensors(step_dir / party_file(int(k), ema=True))
        return cls(meta=meta, messages=msgs, handover=handover, public=public, record=rd.record(),
                   server_state=server_state, run_dir=rd.path, released_clients=released)  # fmt: skip

    def __len__(self) -> int:
        return int(self.messages["x"].shape[0]) if self.messages else 0
