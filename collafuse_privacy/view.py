"""The server's view: everything an honest-but-curious server receives, on disk.

Layout inside a run directory::

    server_view/meta.json                 what the server legitimately knows: protocol,
                                          schedule, t_c, image shape, public split indices
    server_view/train/shard-A-B.safetensors   messages received in rounds A..B:
                                          x (x_t or h), client, round, and t, eps, labels
                                          where the protocol sends them
    server_view/handover/sample.safetensors   hand-over images the server produced at
                                          inference, with the client each went to
    ground_truth/train/shard-A-B.safetensors  image ids of those rows (evaluation only;
                                          attacks never read ground_truth/ or splits.json)

:class:`ServerView` loads exactly this (plus the server's own checkpoint) and is
the only input attacks get.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .errors import UserError
from .io import atomic_write_json, load_tensors, save_tensors
from .protocol import Message

SHARD_RE = re.compile(r"shard-(\d{8})-(\d{8})\.safetensors$")


class ViewRecorder:
    """Stores what the server receives, sharded; ids of the rows go to ground truth.

    ``receive(msg)`` is a transport receiver (it sees only the message);
    ``attach_truth(ids)`` is called by the evaluation harness for the same rows.
    At most ``max_items`` rows are kept (the first ones).
    """

    def __init__(self, run_dir: Path, max_items: int, shard_size: int, dtype: str = "float16"):
        self.view_dir = Path(run_dir) / "server_view" / "train"
        self.truth_dir = Path(run_dir) / "ground_truth" / "train"
        self.max_items = max_items
        self.shard_size = shard_size
        self.dtype = getattr(torch, dtype)
        self.count = 0  # rows written or buffered
        self.round = 0
        self._buf: list[dict[str, torch.Tensor]] = []
        self._ids: list[torch.Tensor] = []
        self._buffered = 0
        self._first_round: Optional[int] = None
        self._last_kept = 0
        self._last_round = 0

    def receive(self, msg: Message) -> None:
        keep = max(0, min(len(msg), self.max_items - self.count))
        self._last_kept = keep
        if keep == 0:
            return
        row = {}
        for k, v in msg.tensors().items():
            v = v[:keep].detach().cpu()
            row[k] = v.to(self.dtype) if v.is_floating_point() else v.to(torch.int64)
        row["client"] = torch.full((keep,), msg.client, dtype=torch.int64)
        row["round"] = torch.full((keep,), self.round, dtype=torch.int64)
        self._buf.append(row)
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

    def flush(self) -> None:
        if not self._buf:
            return
        keys = self._buf[0].keys()
        cat = {k: torch.cat([b[k] for b in self._buf]) for k in keys}
        name = f"shard-{self._first_round:08d}-{self._last_round:08d}.safetensors"
        # Ground truth first: a view shard never exists without its ids.
        save_tensors(self.truth_dir / name, {"image_id": torch.cat(self._ids)})
        save_tensors(self.view_dir / name, cat)
        self._buf, self._ids, self._buffered, self._first_round = [], [], 0, None

    def state_dict(self) -> dict:
        assert not self._buf, "flush before checkpointing"
        return {"count": self.count, "round": self.round}

    def load_state_dict(self, state: dict) -> None:
        """Restore, dropping shards written after the checkpoint (an interrupted tail)."""
        self.count, self.round = int(state["count"]), int(state["round"])
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


def write_meta(run_dir: Path, meta: dict) -> None:
    atomic_write_json(Path(run_dir) / "server_view" / "meta.json", meta)


@dataclass
class ServerView:
    """Everything the server holds, and nothing else.

    ``messages``: the received rows (``x`` [N, C, H, W] float32; ``client``, ``round``
    [N]; plus ``t`` and ``eps`` in shared-noise). ``meta``: protocol, schedule, t_c,
    shape, public indices. ``handover``: hand-over images produced at inference
    (``h``, ``client``) or None. ``server_state``: the server model's weights.
    """

    meta: dict
    messages: dict[str, torch.Tensor] = field(default_factory=dict)
    handover: Optional[dict[str, torch.Tensor]] = None
    server_state: Optional[dict[str, torch.Tensor]] = None
    run_dir: Optional[Path] = None

    released_clients: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    # ---- what the server can build from its view ------------------------------
    @property
    def t_c(self) -> int:
        return int(self.meta["t_c"])

    @property
    def timesteps(self) -> int:
        return int(self.meta["timesteps"])

    @property
    def protocol(self) -> str:
        return str(self.meta["protocol"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        d = self.meta["data"]
        return (int(d["channels"]), int(d["image_size"]), int(d["image_size"]))

    def scheduler(self):
        """The full-chain ``DDPMScheduler`` of the run (the schedule is public to the server)."""
        from .config import DiffusionConfig
        from .diffusion import make_scheduler

        return make_scheduler(DiffusionConfig(**self.meta["diffusion"]))

    def abar(self) -> torch.Tensor:
        """``abar[t]`` float64 ``[T]`` of the full chain."""
        from .diffusion import alphas_cumprod

        return alphas_cumprod(self.scheduler())

    def abar_handover(self) -> float:
        """``abar[t_c - 1]`` (1.0 when ``t_c = 0``: the server receives clean images)."""
        return 1.0 if self.t_c == 0 else float(self.abar()[self.t_c - 1])

    def public_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The public auxiliary split (DESIGN.md §2): ``(images [P, C, H, W] in [-1, 1], labels [P])``.

        The loader reads the dataset files and keeps only ``public_indices``; nothing
        about the clients' splits is known here (meta.json carries no seed).
        """
        from .config import DataConfig
        from .data import load_dataset

        fields = {k: v for k, v in self.meta["data"].items() if k in DataConfig.__dataclass_fields__}
        ds = load_dataset(DataConfig(**fields))
        idx = torch.tensor(self.meta.get("public_indices", []), dtype=torch.long)
        return ds.images[idx].clone(), ds.labels[idx].clone()

    def _build(self, weights: dict[str, torch.Tensor], preset: str, device="cpu"):
        from .models import build_unet

        C, S, _ = self.image_shape
        n_cls = int(weights["class_embedding.weight"].shape[0]) if "class_embedding.weight" in weights else None
        model = build_unet(preset, S, C, n_cls)
        try:
            model.load_state_dict(weights)
        except RuntimeError:
            raise UserError(f"{self.run_dir}: checkpoint does not fit the run's model preset") from None
        return model.to(device).eval()

    def server_model(self, device="cpu"):
        """The server's own denoiser (EMA weights, as used at inference), or None if untrained."""
        if self.server_state is None:
            return None
        return self._build(self.server_state, self.meta["model_preset"], device)

    def client_model(self, k: int, device="cpu"):
        """Client ``k``'s model, only if it was released (``ServerView.load(..., release_clients=[k])``)."""
        if k not in self.released_clients:
            raise UserError(f"client {k}'s model is not part of the server's view (it was not released)")
        preset = self.meta.get("client_preset") or self.meta["model_preset"]
        return self._build(self.released_clients[k], preset, device)

    @classmethod
    def load(cls, run_dir: str | Path, release_clients: tuple[int, ...] = ()) -> "ServerView":
        """Load the server's view of ``run_dir``.

        ``release_clients``: clients whose trained model (EMA weights) was released to the
        server, the threat model of client-model attacks; by default none is.
        """
        run_dir = Path(run_dir)
        meta_path = run_dir / "server_view" / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{run_dir} has no server view (server_view/meta.json); train first")
        meta = json.loads(meta_path.read_text())
        msgs = load_shards(run_dir / "server_view" / "train")
        msgs = {k: (v.float() if v.is_floating_point() else v) for k, v in msgs.items()}
        ho_path = run_dir / "server_view" / "handover" / "sample.safetensors"
        handover = load_tensors(ho_path) if ho_path.is_file() else None
        server_state, released = None, {}
        latest = run_dir / "checkpoints" / "latest.json"
        if latest.is_file():
            try:
                step_dir = run_dir / "checkpoints" / json.loads(latest.read_text())["dir"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{latest} is corrupt") from None
            if meta.get("t_c", 0) < meta.get("timesteps", 0) and (step_dir / "server_ema.safetensors").is_file():
                server_state = load_tensors(step_dir / "server_ema.safetensors")
            for k in release_clients:
                f = step_dir / f"client-{k}_ema.safetensors"
                if not f.is_file():
                    raise UserError(f"{run_dir} has no model of client {k}")
                released[int(k)] = load_tensors(f)
        elif release_clients:
            raise UserError(f"{run_dir} has no checkpoint yet; train first")
        return cls(meta=meta, messages=msgs, handover=handover, server_state=server_state, run_dir=run_dir,
                   released_clients=released)  # fmt: skip

    def __len__(self) -> int:
        return int(self.messages["x"].shape[0]) if self.messages else 0
