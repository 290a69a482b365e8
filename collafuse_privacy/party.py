"""A party's denoiser and its optimiser: Adam with warm-up, gradient clipping, an EMA copy,
optionally Opacus DP-SGD (``defenses/dp_sgd.py``); and the seeded batcher of a client."""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.training_utils import EMAModel

from .config import TrainConfig
from .diffusion import p_losses
from .errors import UserError
from .defenses.dp_sgd import DPSGD
from .rng import deterministic_algorithms, fix_cublas_workspace

EMA_DECAY = 0.999


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.precision`` on ``device``; None for fp32.

    ``auto`` is fp32 on the CPU (bit-reproducible runs) and bf16 on CUDA.
    """
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return PRECISIONS[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


class Party:
    """A denoiser with its optimiser, warm-up schedule and EMA copy.

    ``train.precision``: the forward pass runs under ``torch.autocast`` in bf16 or fp16 (fp16 with a
    gradient scaler, checkpointed with the party); weights, optimiser state, EMA and the loss stay
    fp32. DP-SGD parties always run in fp32 (``make_private``).
    """

    def __init__(self, model: torch.nn.Module, train: TrainConfig, device: torch.device):
        self.model = model.to(device)
        self.device = device
        self.amp = resolve_precision(train.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None
        self.opt = torch.optim.Adam(self.model.parameters(), lr=train.lr, foreach=True)
        warm = max(1, train.lr_warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.ema = EMAModel(self.model.parameters(), decay=EMA_DECAY, use_ema_warmup=True, power=0.75, foreach=True)
        self.grad_clip = train.grad_clip
        self.dp = None  # a defenses.dp_sgd.DPSGD once make_private() was called
        self.deterministic = train.deterministic
        if self.deterministic:  # before cuBLAS' first call (rng.deterministic_algorithms)
            fix_cublas_workspace()

    def make_private(self, **dp_kwargs) -> None:
        """Wrap (model, optimiser) with Opacus DP-SGD (``defenses.dp_sgd.DPSGD`` arguments).

        ``self.model`` stays the plain UNet (its ``state_dict`` keys, EMA and checkpoints are
        unchanged); per-sample clipping replaces ``train.grad_clip``; the EMA copy is a
        post-processing of the private weights.
        """
        self.amp = self.scaler = None  # Opacus computes per-sample gradients in fp32 (train.precision: the server only)
        self.dp = DPSGD(self.model, self.opt, **dp_kwargs)

    def train_step(self, x_t, t, noise, class_labels=None) -> Optional[float]:
        """One optimiser step on ``|eps_theta(x_t, t) - noise|^2``; None for an empty batch.

        With DP an empty batch still takes a step (noise only), as the accounting assumes.
        """
        with self.algorithms():
            return self._train_step(x_t, t, noise, class_labels)

    def algorithms(self):
        """The context of this party's steps: deterministic kernels with ``train.deterministic``."""
        return deterministic_algorithms(self.deterministic)

    def _train_step(self, x_t, t, noise, class_labels=None) -> Optional[float]:
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
        with self.autocast():
            loss = p_losses(self.model, x_t, t, noise, class_labels).mean()  # p_losses: fp32 loss
        self.opt.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        self.finish_step()
        return float(loss.detach())

    def autocast(self) -> torch.autocast:
        """The context of this party's forward passes (``train.precision``; disabled for fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def finish_step(self) -> None:
        """The step after the backward pass (the gradients in ``.grad``, scaled with fp16): clip,
        optimiser step (skipped by the fp16 scaler on inf/nan), warm-up schedule, EMA."""
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
        self.sched.step()
        self.ema.step(self.model.parameters())

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
        if self.scaler is not None:
            out["scaler"] = self.scaler.state_dict()
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
        if (self.scaler is not None) != ("scaler" in state):
            raise ValueError("the checkpoint and this config disagree about train.precision fp16")
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])


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
