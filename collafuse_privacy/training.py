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

Defences (DESIGN.md §4, ``defenses/``): with ``defense.client_dp.enabled`` each
client's :class:`Party` is made private with Opacus DP-SGD (per-sample clipping
instead of ``train.grad_clip``, seeded Gaussian noise, an accountant whose
history is checkpointed) and draws its batch by Poisson sampling at rate
``train.batch_size / members``; the message it sends is built from that batch as
usual. ``protocol.target_epsilon`` picks the cut ratio from the GDP release
accounting before the run starts. Every run ends by writing
``metrics/privacy.json`` (:mod:`collafuse_privacy.defenses.privacy`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
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


def generator(*seed_parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator (CPU unless ``device``) seeded from several integers (stable across runs)."""
    s = 0
    for p in seed_parts:
        s = (s * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(s)


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
        self.dp = None  # a defenses.dp_sgd.DPSGD once make_private() was called

    def make_private(self, **dp_kwargs) -> None:
        """Wrap (model, optimiser) with Opacus DP-SGD (``defenses.dp_sgd.DPSGD`` arguments).

        ``self.model`` stays the plain UNet (its ``state_dict`` keys, EMA and checkpoints are
        unchanged); per-sample clipping replaces ``train.grad_clip``; the EMA copy is a
        post-processing of the private weights.
        """
        from .defenses.dp_sgd import DPSGD

        self.dp = DPSGD(self.model, self.opt, **dp_kwargs)

    def train_step(self, x_t, t, noise, class_labels=None) -> Optional[float]:
        """One optimiser step on ``|eps_theta(x_t, t) - noise|^2``; None for an empty batch.

        With DP an empty batch still takes a step (noise only), as the accounting assumes.
        """
        if self.dp is not None:
            self.model.train()
            loss_fn = None
            if x_t.shape[0] > 0:
                loss_fn = lambda m: p_losses(m, x_t, t, noise, class_labels).mean()  # noqa: E731
            loss = self.dp.step(loss_fn)
            self.sched.step()
            self.ema.step(self.model.parameters())
            return loss
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
        out = {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "ema": ema}
        if self.dp is not None:
            out["dp"] = self.dp.state_dict()
        return out

    def load(self, weights: dict, ema_weights: dict, state: dict) -> None:
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        names = [n for n, _ in self.model.named_parameters()]
        ema = dict(state["ema"])
        ema["shadow_params"] = [ema_weights[n].to(self.device) for n in names]
        self.ema.load_state_dict(ema)
        if (self.dp is not None) != ("dp" in state):
            raise ValueError("the checkpoint and this config disagree about DP-SGD")
        if self.dp is not None:
            self.dp.load_state_dict(state["dp"])


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
    batcher: Batcher  # or defenses.dp_sgd.PoissonSampler for DP clients
    sends: Optional[torch.Tensor] = None  # [n] int64: times each member image crossed the cut


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
        self.cut_choice = None
        if cfg.protocol.target_epsilon is not None:
            cfg = self.cfg = self._resolve_cut(cfg, splits)
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
        # DP-SGD only where a client trains: with t_c = 0 its model never takes a step
        self.dp_on = cfg.defense.client_dp.enabled and self.t_c > 0
        for k, model in enumerate(client_models):
            ids = torch.tensor(self.splits.members[k], dtype=torch.long)
            party = Party(model, cfg, device)
            batcher = Batcher(len(ids), generator(cfg.seed, 3, k))
            if self.dp_on:
                batcher = self._make_private(k, party, len(ids))
            self.clients.append(
                Client(
                    k=k,
                    images=self.data.images[ids].to(device),
                    labels=self.data.labels[ids].to(device),
                    ids=ids,
                    party=party,
                    gen=generator(cfg.seed, 2, k),
                    batcher=batcher,
                    sends=torch.zeros(len(ids), dtype=torch.long),
                )
            )
        rec = cfg.record
        self.recorder = ViewRecorder(self.run_dir, rec.max_items if rec.enabled else 0, rec.shard_size, rec.dtype)
        self.transport = Transport(self.server.receive, self.recorder.receive)
        self.step = 0
        self._eps_cache: dict = {}
        self.counts_complete = True
        if self.resumed:
            self._load_latest()
            write_config(cfg, self.run_dir)  # train.steps may have grown
        if self.dp_on:
            self._check_dp_budget()
        self._write_meta()
        if self.cut_choice is not None and not quiet:
            print(self.cut_choice["message"], file=sys.stderr)

    # ---- setup --------------------------------------------------------------
    def _resolve_cut(self, cfg: Config, splits: Splits) -> Config:
        """``protocol.target_epsilon``: the smallest cut whose server view meets it (DESIGN.md §4).

        Releases per image are fixed before training (1 with fixed noise, else the most
        times an image can be drawn in ``train.steps`` rounds). The chosen ratio replaces
        ``protocol.cut_ratio`` in the resolved config. A resumed run keeps its cut if that
        still meets the target (more rounds mean more releases with fresh noise) and is
        refused otherwise.
        """
        from .defenses.accounting import smallest_cut, view_privacy

        from .rundir import read_run_config

        p = cfg.protocol
        delta = p.target_delta if p.target_delta is not None else cfg.defense.client_dp.delta
        shape = tuple(self.data.shape)
        releases = self._planned_releases(cfg, splits)
        t_c, mu, eps = smallest_cut(self.abar.numpy(), shape, releases, p.target_epsilon, delta)
        T = cfg.diffusion.timesteps
        ratio = t_c / T
        old_path = self.run_dir / "config.yaml"
        if old_path.is_file():
            old = read_run_config(self.run_dir)
            if old.protocol.target_epsilon == p.target_epsilon and old.protocol.cut_ratio != ratio:
                old_t_c = old.t_c
                mu_o, eps_o = view_privacy(p.kind, old_t_c, T, float(abar_at(self.scheduler, old_t_c - 1)), shape,
                                           releases, delta)  # fmt: skip
                if eps_o > p.target_epsilon:
                    raise UserError(
                        f"protocol.target_epsilon={p.target_epsilon:g}: {cfg.train.steps} rounds allow up to {releases} "
                        f"releases per image, and the run's cut c={old.protocol.cut_ratio:g} then gives epsilon={eps_o:.3g}; "
                        f"it would need c={ratio:g}: choose another --out"
                    )
                t_c, mu, eps, ratio = old_t_c, mu_o, eps_o, old.protocol.cut_ratio
        cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(p, cut_ratio=ratio))
        self.cut_choice = {
            "target_epsilon": p.target_epsilon,
            "delta": delta,
            "releases_per_image": releases,
            "cut_ratio": ratio,
            "t_c": t_c,
            "mu": mu,
            "epsilon": eps,
            "message": (
                f"protocol.target_epsilon={p.target_epsilon:g} (delta={delta:g}, {releases} release(s) per image): "
                f"cut_ratio={ratio:g} (t_c={t_c} of T={T}) is the smallest cut meeting it, epsilon={eps:.4g}, mu={mu:.4g}"
                + ("; c=1: nothing crosses the cut" if t_c == T else "")
            ),
        }
        return cfg

    def _planned_releases(self, cfg: Config, splits: Splits) -> int:
        """Releases per image known before training (see defenses.accounting.planned_releases)."""
        from .defenses.accounting import epochs_bound, planned_releases, poisson_draws_bound

        n = min(len(m) for m in splits.members)
        B, R = cfg.train.batch_size, cfg.train.steps
        if cfg.defense.client_dp.enabled:
            draws = poisson_draws_bound(R, min(1.0, B / n), n)
        else:
            draws = epochs_bound(R, B, n)
        return planned_releases(cfg.protocol.fixed_noise, draws)

    def _make_private(self, k: int, party: Party, n: int):
        """Opacus DP-SGD for client ``k`` (``n`` members); returns its Poisson sampler."""
        from .defenses.accounting import dp_sgd_noise_multiplier
        from .defenses.dp_sgd import PoissonSampler

        dp, cfg = self.cfg.defense.client_dp, self.cfg
        q = min(1.0, cfg.train.batch_size / n)
        sigma = dp.noise_multiplier
        if sigma is None:
            sigma = dp_sgd_noise_multiplier(dp.target_epsilon, dp.delta, q, cfg.train.steps, dp.accountant)
        party.make_private(
            noise_multiplier=sigma,
            max_grad_norm=dp.max_grad_norm,
            # the client trains on the drawn images with t < t_c: on average q * n * t_c / T
            expected_batch_size=max(q * n * self.t_c / self.T, 1e-6),
            sample_rate=q,
            accountant=dp.accountant,
            grad_sample_mode=dp.grad_sample_mode,
            generator=generator(cfg.seed, 4, k, device=self.device),
        )
        return PoissonSampler(n, q, generator(cfg.seed, 3, k))

    def _check_dp_budget(self) -> None:
        """Refuse to train past ``defense.client_dp.target_epsilon``."""
        from .defenses.accounting import dp_sgd_epsilon

        dp = self.cfg.defense.client_dp
        if dp.target_epsilon is None:
            return
        remaining = max(0, self.cfg.train.steps - self.step)
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

    def client_dp_epsilons(self) -> list[float]:
        """Epsilon spent so far by each DP client (memoised on the accountant history)."""
        dp = self.cfg.defense.client_dp
        out = []
        for c in self.clients:
            key = (tuple(c.party.dp.accountant.history), dp.delta, dp.accountant)
            if key not in self._eps_cache:
                self._eps_cache[key] = c.party.dp.epsilon(dp.delta)
            out.append(self._eps_cache[key])
        return out
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
            "release_counts": [c.sends.clone() for c in self.clients],
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
            counts = state.get("release_counts")
            self.counts_complete = counts is not None  # checkpoints from before counting
            for c, n in zip(self.clients, counts or []):
                if n.shape != c.sends.shape:
                    raise ValueError("release counts do not fit")
                c.sends = n.clone()
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
            sent = pos[remote.cpu()]
            c.sends.index_add_(0, sent, torch.ones_like(sent))
        row["server_loss"], row["server_n"] = self.server.train_step()
        self.recorder.end_round()
        self.step += 1
        if self.dp_on:
            every = self.cfg.defense.client_dp.log_every
            if self.step % every == 0 or self.step == self.cfg.train.steps:
                row["client_dp_epsilon"] = self.client_dp_epsilons()
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
        self.write_privacy()
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


    def privacy_inputs(self) -> dict:
        """What defenses.privacy.compute_privacy needs, from the live run."""
        return {
            "release_counts": [c.sends for c in self.clients] if self.counts_complete else None,
            "dp_states": [c.party.dp.state_dict() for c in self.clients] if self.dp_on else None,
            "n_members": [len(c.ids) for c in self.clients],
            "steps": self.step,
        }

    def write_privacy(self) -> dict:
        """``metrics/privacy.json``: formal epsilon of the server's view and of DP clients."""
        from .defenses.privacy import compute_privacy, write_privacy

        report = compute_privacy(self.cfg, tuple(self.data.shape), cut_choice=self.cut_choice,
                                 **self.privacy_inputs())  # fmt: skip
        write_privacy(self.run_dir, report)
        return report


def train(cfg: Config, run_dir: str | Path, device: str = "auto", quiet: bool = False, on_round=None) -> dict:
    """Train (or resume) the run in ``run_dir``; returns a small summary."""
    trainer = Trainer(cfg, Path(run_dir), resolve_device(device), quiet=quiet)
    return trainer.train(on_round=on_round)
