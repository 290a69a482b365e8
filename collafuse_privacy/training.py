"""CollaFuse training: N clients and one server in one process, round by round.

Each round every client draws a batch of its member images, a timestep
``t ~ U{0..T-1}`` and noise ``eps`` per image (Ho et al. 2020). Images with
``t < t_c`` train the client's own model and never leave it; the others cross
the cut as a protocol message (DESIGN.md §1). After all clients have sent, the
server takes one optimiser step on what it received this round. Every image is
thus seen by exactly one denoiser, so the total denoiser work equals a plain
DDPM loop over the same images.

Everything random draws from a ``torch.Generator`` (one per party, one per
client batcher) whose state is checkpointed; a resumed run is bit-identical to
an uninterrupted one on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from diffusers.training_utils import EMAModel

from .config import Config
from .data import Dataset, Splits, load_dataset, make_splits
from .diffusion import abar_at, alphas_cumprod, handover, make_scheduler, p_losses, q_sample, tail_scheduler
from .errors import UserError
from .io import append_jsonl, atomic_write_json, load_state, load_tensors, save_state, save_tensors, truncate_jsonl
from .models import build_unet, num_params
from .protocol import CutImageMessage, Message, SharedNoiseMessage, Transport
from .rundir import open_run, write_config
from .view import ViewRecorder, write_meta

EMA_DECAY = 0.999


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from several integers (stable across runs)."""
    s = 0
    for p in seed_parts:
        s = (s * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(s)


class Party:
    """A denoiser with its optimiser, warm-up schedule and EMA copy."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: torch.device):
        self.model = model.to(device)
        self.device = device
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, foreach=True)
        warm = max(1, cfg.train.lr_warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.ema = EMAModel(self.model.parameters(), decay=EMA_DECAY, use_ema_warmup=True, power=0.75, foreach=True)
        self.grad_clip = cfg.train.grad_clip

    def train_step(self, x_t, t, noise, class_labels=None) -> Optional[float]:
        """One optimiser step on ``|eps_theta(x_t, t) - noise|^2``; None for an empty batch."""
        if x_t.shape[0] == 0:
            return None
        self.model.train()
        loss = p_losses(self.model, x_t, t, noise, class_labels).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.opt.step()
        self.sched.step()
        self.ema.step(self.model.parameters())
        return float(loss.detach())

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        sd = dict(self.model.state_dict())
        for (name, _), shadow in zip(self.model.named_parameters(), self.ema.shadow_params):
            sd[name] = shadow
        return sd

    def state_dict(self) -> dict:
        ema = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "ema": ema}

    def load(self, weights: dict, ema_weights: dict, state: dict) -> None:
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        names = [n for n, _ in self.model.named_parameters()]
        ema = dict(state["ema"])
        ema["shadow_params"] = [ema_weights[n].to(self.device) for n in names]
        self.ema.load_state_dict(ema)


class Batcher:
    """Epochs over ``n`` items in seeded random order (state: permutation + position)."""

    def __init__(self, n: int, gen: torch.Generator):
        self.n, self.gen = n, gen
        self.perm = torch.randperm(n, generator=gen)
        self.pos = 0

    def next(self, batch: int) -> torch.Tensor:
        out = []
        while batch > 0:
            if self.pos >= self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(batch, self.n - self.pos)
            out.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            batch -= take
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "gen": self.gen.get_state()}

    def load_state_dict(self, s: dict) -> None:
        self.perm, self.pos = s["perm"], int(s["pos"])
        self.gen.set_state(s["gen"])


@dataclass
class Client:
    """A client: its private member images, its local model, its own randomness."""

    k: int
    images: torch.Tensor  # [n, C, H, W] in [-1, 1], on the device
    labels: torch.Tensor  # [n]
    ids: torch.Tensor  # [n] dataset indices (ground truth; never sent)
    party: Party
    gen: torch.Generator  # t and eps draws
    batcher: Batcher


class Server:
    """The shared server model for ``t >= t_c``; trains on what it receives."""

    def __init__(self, party: Party, cfg: Config, scheduler, gen: torch.Generator):
        self.party, self.cfg, self.gen = party, cfg, gen
        self.kind = cfg.protocol.kind
        self.t_c = cfg.t_c
        self.T = cfg.diffusion.timesteps
        self.conditioning = cfg.model.server_conditioning
        # cut-image: the server's own DDPM over hand-over images, on betas[t_c:]
        self.abar_tail = alphas_cumprod(tail_scheduler(scheduler, self.t_c)) if self.t_c < self.T else None
        self.inbox: list[Message] = []

    def receive(self, msg: Message) -> None:
        self.inbox.append(msg)

    def class_labels(self, msgs: list[Message]) -> Optional[torch.Tensor]:
        if self.conditioning == "client":
            return torch.cat([torch.full((len(m),), m.client, dtype=torch.long) for m in msgs])
        if self.conditioning == "labels":
            return torch.cat([m.labels for m in msgs])
        return None

    def model_inputs(self, msgs: list[Message]):
        """What the server trains on: ``(x_t, t, target_noise, class_labels)``.

        shared-noise: the received ``(x_t, t, eps)`` as they are. cut-image: the server's
        own DDPM over the hand-over images: ``s ~ U{0..T-t_c-1}``, fresh ``eps2``,
        ``x_t = sqrt(abar'[s]) h + sqrt(1-abar'[s]) eps2`` at global ``t = t_c + s``.
        """
        dev = self.party.device
        labels = self.class_labels(msgs)
        labels = labels.to(dev) if labels is not None else None
        if self.kind == "shared-noise":
            x_t = torch.cat([m.x_t for m in msgs])
            t = torch.cat([m.t for m in msgs]).to(dev)
            target = torch.cat([m.eps for m in msgs])
        else:
            h = torch.cat([m.h for m in msgs])
            s = torch.randint(0, self.T - self.t_c, (h.shape[0],), generator=self.gen)
            target = torch.randn(h.shape, generator=self.gen).to(dev)
            x_t = q_sample(h, s.to(dev), target, self.abar_tail)
            t = (s + self.t_c).to(dev)  # the model is told the global timestep
        return x_t, t, target, labels

    def train_step(self) -> tuple[Optional[float], int]:
        """One step on this round's inbox; returns (loss, images)."""
        msgs, self.inbox = self.inbox, []
        if not msgs:
            return None, 0
        x_t, t, target, labels = self.model_inputs(msgs)
        return self.party.train_step(x_t, t, target, labels), int(x_t.shape[0])


def fixed_handover_noise(ids: torch.Tensor, shape, seed: int) -> torch.Tensor:
    """``eps1`` fixed per image (seeded by image id): one release per image."""
    out = torch.empty((len(ids), *shape))
    for i, image_id in enumerate(ids.tolist()):
        out[i] = torch.randn(shape, generator=generator(seed, 0xF1ED, image_id))
    return out


def client_message(cfg: Config, scheduler, k: int, x0, t, eps, ids, labels=None) -> Message:
    """The message client ``k`` sends for its images with ``t >= t_c`` (DESIGN.md §1).

    ``x0`` [n, C, H, W] clean images, ``t`` [n] their timesteps, ``eps`` [n, C, H, W] the
    client's noise, ``ids`` [n] their dataset indices (used only to seed fixed noise;
    never sent).
    """
    if cfg.protocol.kind == "shared-noise":
        abar = alphas_cumprod(scheduler)
        return SharedNoiseMessage(k, labels, x_t=q_sample(x0, t, eps, abar), t=t, eps=eps)
    if cfg.protocol.fixed_noise:
        eps = fixed_handover_noise(ids, x0.shape[1:], cfg.seed).to(x0.device)
    return CutImageMessage(k, labels, h=handover(x0, cfg.t_c, eps, scheduler))


class Trainer:
    """Builds the parties for ``cfg`` in ``run_dir`` and runs / resumes training."""

    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, quiet: bool = False):
        self.cfg, self.run_dir, self.device, self.quiet = cfg, Path(run_dir), device, quiet
        # Everything that can fail on bad input is checked before the run directory is touched.
        self.data = load_dataset(cfg.data)
        splits = make_splits(self.data, cfg.data, cfg.seed)
        self.scheduler = make_scheduler(cfg.diffusion)
        self.abar = alphas_cumprod(self.scheduler)
        self.t_c, self.T = cfg.t_c, cfg.diffusion.timesteps
        torch.manual_seed(cfg.seed)  # model initialisation
        C, S = self.data.shape[0], cfg.data.image_size
        n_embeds = {"none": None, "client": cfg.data.clients, "labels": self.data.num_classes}
        server_model = build_unet(cfg.model.preset, S, C, n_embeds[cfg.model.server_conditioning])
        client_models = [build_unet(cfg.model.client_preset or cfg.model.preset, S, C) for _ in range(cfg.data.clients)]
        self.resumed = open_run(cfg, self.run_dir)
        self.splits = self._splits(splits)
        self.server = Server(Party(server_model, cfg, device), cfg, self.scheduler, generator(cfg.seed, 1))
        self.clients = []
        for k, model in enumerate(client_models):
            ids = torch.tensor(self.splits.members[k], dtype=torch.long)
            self.clients.append(
                Client(
                    k=k,
                    images=self.data.images[ids].to(device),
                    labels=self.data.labels[ids].to(device),
                    ids=ids,
                    party=Party(model, cfg, device),
                    gen=generator(cfg.seed, 2, k),
                    batcher=Batcher(len(ids), generator(cfg.seed, 3, k)),
                )
            )
        rec = cfg.record
        self.recorder = ViewRecorder(self.run_dir, rec.max_items if rec.enabled else 0, rec.shard_size, rec.dtype)
        self.transport = Transport(self.server.receive, self.recorder.receive)
        self.step = 0
        if self.resumed:
            self._load_latest()
            write_config(cfg, self.run_dir)  # train.steps may have grown
        self._write_meta()

    # ---- setup --------------------------------------------------------------
    def _splits(self, splits: Splits) -> Splits:
        path = self.run_dir / "splits.json"
        if path.is_file():
            try:
                saved = Splits.from_dict(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path} is corrupt") from None
            if saved.to_dict() != splits.to_dict():
                raise UserError(f"{path} does not match the data found now (was the dataset changed?)")
            return saved
        atomic_write_json(path, splits.to_dict())
        return splits

    def _write_meta(self) -> None:
        cfg = self.cfg
        write_meta(
            self.run_dir,
            {
                "protocol": cfg.protocol.kind,
                "cut_ratio": cfg.protocol.cut_ratio,
                "fixed_noise": cfg.protocol.fixed_noise,
                "t_c": self.t_c,
                "timesteps": self.T,
                "handover_level": self.t_c - 1,
                "abar_handover": float(abar_at(self.scheduler, self.t_c - 1)),
                "diffusion": cfg.to_dict()["diffusion"],
                "server_conditioning": cfg.model.server_conditioning,
                "model_preset": cfg.model.preset,
                "client_preset": cfg.model.client_preset,
                "clients": cfg.data.clients,
                # how to load the public split (not the seed: the server cannot rebuild the
                # clients' splits from this)
                "data": {**cfg.to_dict()["data"], "channels": self.data.shape[0]},
                # public auxiliary data (DESIGN.md §2): indices into the dataset
                "public_indices": self.splits.public,
            },
        )

    # ---- checkpoints --------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> None:
        self.recorder.flush()
        name = f"step-{self.step:08d}"
        final, tmp = self.ckpt_dir / name, self.ckpt_dir / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        parties = [("server", self.server.party)] + [(f"client-{c.k}", c.party) for c in self.clients]
        for pname, party in parties:
            save_tensors(tmp / f"{pname}.safetensors", party.model.state_dict())
            save_tensors(tmp / f"{pname}_ema.safetensors", party.ema_state_dict())
        state = {
            "step": self.step,
            "parties": {pname: party.state_dict() for pname, party in parties},
            "server_gen": self.server.gen.get_state(),
            "client_gens": [c.gen.get_state() for c in self.clients],
            "batchers": [c.batcher.state_dict() for c in self.clients],
            "recorder": self.recorder.state_dict(),
            "transport": {"messages": self.transport.messages, "bytes": self.transport.bytes},
        }
        save_state(tmp / "state.pt", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_json(self.ckpt_dir / "latest.json", {"dir": name, "step": self.step})
        old = sorted(p for p in self.ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))
        for p in old[: -self.cfg.train.keep_checkpoints]:
            shutil.rmtree(p)

    def _load_latest(self) -> None:
        latest = self.ckpt_dir / "latest.json"
        for p in self.ckpt_dir.glob(".step-*.tmp") if self.ckpt_dir.is_dir() else []:
            shutil.rmtree(p)  # a checkpoint cut off by an interruption
        if not latest.is_file():
            self._rewind(0)
            return
        try:
            info = json.loads(latest.read_text())
            d = self.ckpt_dir / info["dir"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{latest} is corrupt") from None
        state = load_state(d / "state.pt")
        parties = [("server", self.server.party)] + [(f"client-{c.k}", c.party) for c in self.clients]
        for pname, party in parties:
            w = load_tensors(d / f"{pname}.safetensors")
            e = load_tensors(d / f"{pname}_ema.safetensors")
            try:
                party.load(w, e, state["parties"][pname])
            except (RuntimeError, KeyError, ValueError, TypeError) as exc:
                raise UserError(f"checkpoint {d} does not fit this config ({pname}: {type(exc).__name__})") from None
        try:
            self.server.gen.set_state(state["server_gen"])
            for c, g, b in zip(self.clients, state["client_gens"], state["batchers"]):
                c.gen.set_state(g)
                c.batcher.load_state_dict(b)
            self.transport.messages = int(state["transport"]["messages"])
            self.transport.bytes = int(state["transport"]["bytes"])
            self.step = int(state["step"])
            self.recorder.load_state_dict(state["recorder"])
        except (RuntimeError, KeyError, ValueError, TypeError):
            raise UserError(f"checkpoint {d}/state.pt does not fit this run") from None
        self._rewind(self.step)

    def _rewind(self, step: int) -> None:
        """Drop log rows and view shards written after ``step`` (an interrupted tail)."""
        truncate_jsonl(self.run_dir / "metrics" / "train.jsonl", lambda r: r.get("step", 0) <= step)
        if step == 0:
            self.recorder.load_state_dict({"count": 0, "round": 0})

    # ---- the loop -----------------------------------------------------------
    def train_round(self) -> dict:
        """One round: every client trains locally and sends; then the server steps."""
        cfg, dev = self.cfg, self.device
        row = {"step": self.step + 1, "client_loss": [], "client_n": [], "sent": []}
        for c in self.clients:
            pos = c.batcher.next(cfg.train.batch_size)
            x0, y, ids = c.images[pos.to(dev)], c.labels[pos.to(dev)], c.ids[pos]
            t = torch.randint(0, self.T, (len(pos),), generator=c.gen)
            eps = torch.randn(x0.shape, generator=c.gen).to(dev)
            local, remote = (t < self.t_c).to(dev), (t >= self.t_c).to(dev)
            t = t.to(dev)
            # 1. the client's own steps t < t_c: nothing of this leaves the client
            x_t = q_sample(x0[local], t[local], eps[local], self.abar)
            row["client_loss"].append(c.party.train_step(x_t, t[local], eps[local]))
            row["client_n"].append(int(local.sum()))
            # 2. what crosses the cut for t >= t_c
            n_remote = int(remote.sum())
            row["sent"].append(n_remote)
            if n_remote == 0:
                continue
            labels = y[remote] if cfg.model.server_conditioning == "labels" else None
            msg = client_message(cfg, self.scheduler, c.k, x0[remote], t[remote], eps[remote], ids[remote.cpu()], labels)
            self.transport.send(msg)
            self.recorder.attach_truth(ids[remote.cpu()])
        row["server_loss"], row["server_n"] = self.server.train_step()
        self.recorder.end_round()
        self.step += 1
        return row

    def train(self, on_round: Optional[Callable[[int], None]] = None) -> dict:
        """Train until ``train.steps`` rounds are done, checkpointing on the way."""
        from tqdm import tqdm

        cfg = self.cfg
        total = cfg.train.steps
        log = self.run_dir / "metrics" / "train.jsonl"
        t0 = time.perf_counter()
        bar = tqdm(total=total, initial=min(self.step, total), desc="train", disable=self.quiet, dynamic_ncols=True)
        ema_s = ema_c = None
        while self.step < total:
            r0 = time.perf_counter()
            row = self.train_round()
            row["seconds"] = round(time.perf_counter() - r0, 4)
            append_jsonl(log, [row])
            cl = [x for x in row["client_loss"] if x is not None]
            if row["server_loss"] is not None:
                ema_s = row["server_loss"] if ema_s is None else 0.95 * ema_s + 0.05 * row["server_loss"]
            if cl:
                m = sum(cl) / len(cl)
                ema_c = m if ema_c is None else 0.95 * ema_c + 0.05 * m
            bar.update(1)
            bar.set_postfix(server=f"{ema_s:.4f}" if ema_s is not None else "-", client=f"{ema_c:.4f}" if ema_c is not None else "-")
            if self.step % cfg.train.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
            if on_round is not None:
                on_round(self.step)
        bar.close()
        if self.step == total and not (self.ckpt_dir / "latest.json").is_file():
            self.save_checkpoint()
        return {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "seconds": time.perf_counter() - t0,
            "messages": self.transport.messages,
            "bytes_sent": self.transport.bytes,
            "server_params": num_params(self.server.party.model),
            "client_params": num_params(self.clients[0].party.model),
            "recorded": self.recorder.count,
        }


def train(cfg: Config, run_dir: str | Path, device: str = "auto", quiet: bool = False, on_round=None) -> dict:
    """Train (or resume) the run in ``run_dir``; returns a small summary."""
    trainer = Trainer(cfg, Path(run_dir), resolve_device(device), quiet=quiet)
    return trainer.train(on_round=on_round)
