"""``lira``: the likelihood-ratio attack with reference models, offline (Carlini, Chien, Nasr,
Song, Terzis, Tramer, "Membership Inference Attacks From First Principles", S&P 2022).

LiRA compares a candidate's statistic on the target model with its distribution on reference
models that never saw it. Offline: only "out" references, trained without the candidates,
and the score is how far the target's statistic falls on the member side of that
distribution, ``(mean_out(x) - s_target(x)) / sigma_out`` (one-sided; a per-candidate sigma
needs many references, so with fewer than 8 a global sigma is used, the paper's "fixed
variance" variant, estimated once on the public images: a candidate's score never depends on
the other candidates scored with it).

Here the statistic is the ``loss`` attack's denoising error on fixed seeded probes (lower =
member), and the references are models the server trains itself, in the target's range and
with the target's architecture and optimiser, on its own public images passed through the
protocol (the cut-image server: hand-over images of them, fixed per image with fixed noise;
shared-noise: ``x_t`` at ``t >= t_c``; a client model: ``t < t_c``), for as many rounds as the
target trained and with as many images per round as it received. They never saw any
candidate: the public split is disjoint from the clients' data. ``n_ref`` sets their number
(``default = False``: it trains models, so it runs when asked for by name).
"""

from __future__ import annotations

import torch

from collafuse_privacy.models import build_unet
from collafuse_privacy.rng import generator

from .base import NotApplicable, register
from .loss import LossAttack
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401
from collafuse_privacy.config import TrainConfig
from collafuse_privacy.party import Party


@register("lira")
class LiRA(LossAttack):
    default = False
    OPTIONS = {"n_ref": Opt(int, 2, 1000), "ref_steps": Opt(int, 1, 10_000_000, nullable=True),
               "ref_batch": Opt(int, 1, 1_000_000, nullable=True)}

    def __init__(self, target="server", device="cpu", n_ref: int = 4, ref_steps=None, ref_batch=None, **kw):
        super().__init__(target, device, **kw)
        if int(n_ref) < 2:
            raise ValueError(f"lira needs at least 2 reference models, got n_ref={n_ref}")
        self.n_ref = int(n_ref)
        self.ref_steps, self.ref_batch = ref_steps, ref_batch
        self.refs: list = []

    def describe(self) -> dict:
        return {**super().describe(), "n_ref": self.n_ref, "ref_steps": self.ref_steps, "ref_batch": self.ref_batch,
                "variance": "global" if self.n_ref < 8 else "per candidate"}  # fmt: skip

    def fit(self, view) -> "LiRA":
        super().fit(view)
        self._sigma = None
        public, preset = self._references_plan(view, min_public=2)
        self.refs = [self._train_reference(view, public, preset, i) for i in range(self.n_ref)]
        return self

    def _references_plan(self, view, min_public: int) -> tuple[torch.Tensor, str]:
        """``(public images, preset)`` for the references; fills ``ref_steps`` (the target's rounds) and
        ``ref_batch`` (the rows per round it received) where not given."""
        public = view.public_images()[0]
        if len(public) < min_public:
            raise NotApplicable(f"{self.name} needs at least {min_public} public images to train reference models "
                                f"on (data.public_fraction)")  # fmt: skip
        if view.protocol.aggregates and self.ref_batch is None:  # fedavg's rows are models, one per upload
            raise NotApplicable(f"{self.name}: a fedavg view holds uploaded models, which do not say the clients' "
                                f"batch size the references must mimic; give it as the option ref_batch")  # fmt: skip
        rounds = view.messages["round"] if len(view) else torch.zeros(0, dtype=torch.long)
        if self.ref_steps is None:
            self.ref_steps = int(rounds.max()) + 1 if len(rounds) else 100
        if self.ref_batch is None:
            self.ref_batch = max(1, int(round(len(rounds) / max(1, int(rounds.max()) + 1)))) if len(rounds) else 64
        preset = view.meta.model_preset if self.target_kind == "server" else (view.meta.client_preset or
                                                                              view.meta.model_preset)  # fmt: skip
        return public, preset

    def _train_reference(self, view, public: torch.Tensor, preset: str, i: int):
        """A model of the target's kind trained on the public images in the target's range."""
        m = view.meta
        gen = generator(self.seed, 0x11FA, i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            model = build_unet(preset, public.shape[-1], public.shape[1], self.num_class_embeds)
        party = Party(model, TrainConfig(lr=m.server_lr, lr_warmup=m.server_lr_warmup, grad_clip=m.server_grad_clip),
                      self.device)  # fmt: skip
        fixed = torch.randn(public.shape, generator=gen) if m.fixed_noise else None
        n = len(self.abar_s)
        for _ in range(int(self.ref_steps)):
            idx = torch.randint(0, len(public), (int(self.ref_batch),), generator=gen)
            x = public[idx]
            if self.hand_a:  # the cut-image server's data: hand-over images of the public images
                eps1 = fixed[idx] if fixed is not None else torch.randn(x.shape, generator=gen)
                x = self.range.data(x, eps1)
            s = torch.randint(0, n, (len(x),), generator=gen)
            eps = torch.randn(x.shape, generator=gen)
            a = self.abar_s[s].float().view(-1, 1, 1, 1)
            x_s = a.sqrt() * x + (1 - a).sqrt() * eps
            labels = None
            if self.num_class_embeds:
                labels = torch.randint(0, int(self.num_class_embeds), (len(x),), generator=gen).to(self.device)
            party.train_step(x_s.to(self.device), (s + self.t_off).to(self.device), eps.to(self.device), labels)
        ema = party.ema_state_dict()
        model.load_state_dict(ema)
        return model.eval()

    @torch.no_grad()
    def _errors(self, candidates: torch.Tensor, client) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's and every reference's error on ``candidates``: ``[M]``, ``[M, n_ref]`` float64."""
        target = self.model
        out_t, out_r = [], []
        try:
            for i in range(0, candidates.shape[0], self.batch_size):
                x = candidates[i : i + self.batch_size].float().to(self.device)
                options = self.label_options(x.shape[0], client)
                self.model = target
                out_t.append(torch.stack([self.error(x, lab) for lab in options]).amin(0).cpu())
                per_ref = []
                for ref in self.refs:
                    self.model = ref
                    per_ref.append(torch.stack([self.error(x, lab) for lab in options]).amin(0).cpu())
                out_r.append(torch.stack(per_ref, 1))
        finally:
            self.model = target
        if not out_t:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, len(self.refs), dtype=torch.float64)
        return torch.cat(out_t).double(), torch.cat(out_r).double()

    def _global_sigma(self, view) -> float:
        """The fixed variance (fewer than 8 references): the references' spread around their per-image
        means on the public images, estimated once, so a candidate's score does not depend on which
        other candidates are scored with it (a constant: it scales the scores, it does not reorder
        them)."""
        if getattr(self, "_sigma", None) is None:
            _, e_r = self._errors(view.public_images()[0], None)
            self._sigma = float((e_r - e_r.mean(1, keepdim=True)).pow(2).mean().sqrt().clamp_min(1e-12))
        return self._sigma

    @torch.no_grad()
    def score(self, view, candidates: torch.Tensor, client=None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("call fit(view) first")
        e_t, e_r = self._errors(candidates, client)
        mean = e_r.mean(1)
        if self.n_ref >= 8:
            sigma = e_r.std(1).clamp_min(1e-12)
        else:
            sigma = self._global_sigma(view)
        return (mean - e_t) / sigma
