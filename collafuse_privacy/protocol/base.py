"""The protocol interface: what a client sends, what the server does with it, and
what that means for the view (DESIGN.md §1).

A protocol is a class registered by name (``shared-noise``, ``cut-image``), built
for one :class:`~.cut.Cut` (``make_protocol(kind, cut, fixed_noise)``). Training,
sampling, the server's view, attacks, accounting and burden ask this object; no
other module branches on the protocol's name. Adding a protocol means one file
with a subclass of :class:`Protocol` and its registration (``@register``),
imported in ``protocol/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..config import PROTOCOL_NAMES
from ..defenses.accounting import gdp_epsilon
from ..diffusion import make_scheduler
from ..errors import UserError
from ..registry import Registry
from .conditioning import Conditioning, make_conditioning
from .cut import Cut, noised
from .messages import Message


@dataclass(frozen=True)
class ModelRange:
    """A target model's part of the chain, in the model's own coordinates.

    Local step ``s = 0..n-1`` is global timestep ``t_off + s``; ``abar[s]`` (float64 ``[n]``)
    is the noise table of the model's DDPM; its clean data are ``x`` itself (``hand_a = 0``)
    or, for the cut-image server, the hand-over images
    ``h = sqrt(hand_a) x + sqrt(1 - hand_a) eps1`` of ``x``.
    """

    t_off: int
    abar: torch.Tensor
    hand_a: float = 0.0

    def __len__(self) -> int:
        return int(self.abar.shape[0])

    def data(self, x: torch.Tensor, eps1: torch.Tensor) -> torch.Tensor:
        """The model's clean data for images ``x``: ``x`` itself, or the hand-over images
        ``h = sqrt(hand_a) x + sqrt(1 - hand_a) eps1`` (:func:`~.cut.noised`) where ``hand_a > 0``."""
        return noised(x, eps1, self.hand_a) if self.hand_a else x


class Protocol:
    """One way of splitting training and sampling between clients and the server.

    Subclasses set ``name`` (by :func:`register`), ``sends_noise`` (the client's ``eps``
    travels with the image, so the server recovers ``x0`` exactly) and implement the
    methods below. ``cut``: where the chain is split; ``fixed_noise``: one release per
    image (only where the protocol supports it); ``conditioning``: what the server model is
    conditioned on (``model.server_conditioning``, :mod:`.conditioning`), which decides whether
    labels cross. ``message_type``: the :class:`Message` subclass it sends (what :meth:`decode`
    rebuilds and what a row's bytes are counted from).
    """

    name: ClassVar[str] = ""
    sends_noise: ClassVar[bool] = False
    aggregates: ClassVar[bool] = False  # the clients upload whole models that the server averages (fedavg)
    message_type: ClassVar[type[Message]] = Message

    def __init__(self, cut: Cut, fixed_noise: bool = False, conditioning: str = "none"):
        self.cut = cut
        self.fixed_noise = bool(fixed_noise)
        self.conditioning: Conditioning = make_conditioning(conditioning)

    @property
    def sends_labels(self) -> bool:
        """Every row carries its image's label in the clear (``model.server_conditioning = labels``). Under
        the view's replace-one adjacency (any image for any other) a replaced image's label is seen exactly,
        so no finite mu or epsilon holds for the view (release_mu is infinite where anything crosses)."""
        return self.conditioning.sends_labels

    # ---- configuration ------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise :class:`UserError` naming the key when ``cfg`` asks what this protocol cannot do."""
        if cfg.protocol.fixed_noise:
            raise UserError(f"config key 'protocol.fixed_noise' applies to protocol.kind=cut-image only "
                            f"({cls.name} has no hand-over noise to fix)")  # fmt: skip

    # ---- client: what crosses the cut ------------------------------------------------
    def encode(self, client: int, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, *, ids: torch.Tensor,
               secret: int, labels: Optional[torch.Tensor] = None) -> Message:  # fmt: skip
        """The message client ``client`` sends for its images with ``t >= t_c``.

        ``x0`` [n, C, H, W] clean images in [-1, 1], ``t`` [n] their timesteps, ``eps``
        [n, C, H, W] the client's noise; ``ids`` [n] their ids and ``secret`` the client's
        secret (client-side only, for fixed noise; never sent); ``labels`` [n] only when
        the conditioning sends them (others are dropped here: :meth:`message_labels`).
        """
        raise NotImplementedError

    def message_labels(self, labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """What of the labels ``[n]`` crosses with the rows (the conditioning decides; None: nothing)."""
        return None if labels is None else self.conditioning.message_labels(labels)

    @staticmethod
    def shuffle_rows(crossing: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Positions ``[m]`` int64 (CPU) of the ``m >= 1`` True entries of ``crossing`` ``[n]`` in a uniformly
        random order drawn from ``gen`` (the client's ``order`` generator): a message carries neither the
        draw order nor the order of the client's data. Call it only when some row crosses."""
        return torch.nonzero(crossing.cpu()).flatten()[torch.randperm(int(crossing.sum()), generator=gen)]

    def decode(self, client: int, tensors: dict[str, torch.Tensor]) -> Message:
        """Rebuild the message client ``client`` sent from its :meth:`Message.tensors` (what a network
        transport carries), as this protocol's :attr:`message_type`."""
        return self.message_type.from_tensors(client, tensors)

    # ---- server: training and sampling ------------------------------------------------
    def server_batch(self, msgs: list[Message], gen: torch.Generator, device) -> tuple[torch.Tensor, ...]:
        """What the server trains on: ``(x_t, t, target_noise)``, ``t`` global timesteps."""
        raise NotImplementedError

    def model_inputs(self, msgs: list[Message], gen: torch.Generator, device) -> tuple:
        """What the server model trains on: ``(x_t, t, target_noise, class_labels)`` (:meth:`server_batch`
        and the conditioning's class labels, None for an unconditional model, on ``device``)."""
        labels = self.conditioning.class_labels(msgs)
        labels = labels.to(device) if labels is not None else None
        x_t, t, target = self.server_batch(msgs, gen, device)
        return x_t, t, target, labels

    def full_chain_eps(self, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The server model's noise prediction ``eps`` at global timesteps ``t`` ([B]) in the full
        chain's parameterisation (what the one sampler steps with; the identity where the server
        trains on the full chain's noise)."""
        return eps

    @torch.no_grad()
    def server_denoise(self, model, x: torch.Tensor, class_labels, gen: torch.Generator, sampler) -> torch.Tensor:
        """The server's part of sampling, ``x_{T-1} -> h = x_{t_c-1}``: the full-chain steps
        ``t = T-1 .. t_c`` of the one ``sampler`` (``collafuse_privacy.sampler.Sampler``)."""
        def predict(x, t):
            return self.full_chain_eps(model(x, t, class_labels=class_labels).sample, t)

        return sampler.run(predict, x, self.cut.T - 1, self.cut.t_c, gen)

    # ---- the view --------------------------------------------------------------------
    def no_image_rows(self) -> Optional[str]:
        """Why the view holds no image rows an attack on images could read (None: it may)."""
        if self.cut.sends_nothing:
            return "nothing was sent: c = 1 (t_c = T), clients run every denoising step locally"
        return None

    def level_range(self) -> tuple[int, int]:
        """Levels ``[lo, hi]`` the rows the server receives can be at (``-1``: clean)."""
        raise NotImplementedError

    def row_levels(self, messages: dict[str, torch.Tensor]) -> torch.Tensor:
        """Level of each recorded row ``[N]`` int64: ``x = sqrt(abar[lvl]) x0 + sqrt(1-abar[lvl]) eps``."""
        raise NotImplementedError

    def recover_x0(self, messages: dict[str, torch.Tensor], rows=None) -> torch.Tensor:
        """``x0`` of the selected rows, exactly, where the protocol sends the noise (float64)."""
        raise ValueError(f"{self.name} sends no noise with its images: x0 cannot be recovered exactly")

    def model_range(self, target: str) -> ModelRange:
        """The part of the chain the ``"server"`` or ``"client"`` model was trained on.

        Raises ValueError with the reason when that model owns no step.
        """
        cut = self.cut
        if target == "client":
            if cut.sends_clean:
                raise ValueError("c = 0 (t_c = 0): the clients own no timesteps; their models were never trained")
            return ModelRange(0, cut.client_range(), 0.0)
        if cut.sends_nothing:
            raise ValueError("c = 1 (t_c = T): the server owns no timesteps and has no model")
        return self._server_range()

    def _server_range(self) -> ModelRange:
        raise NotImplementedError

    # ---- accounting and burden ----------------------------------------------------------
    def release_mu(self, image_shape, releases: int = 1, sensitivity_l2: Optional[float] = None) -> float:
        """mu-GDP of ``releases`` releases of one image in the server's view (DESIGN.md §4);
        ``inf`` where the view reveals the image, 0 where nothing is sent."""
        raise NotImplementedError

    def view_privacy(self, image_shape, releases: int, delta: float) -> tuple[float, float]:
        """``(mu, epsilon)`` of the server's view of one image released ``releases`` times."""
        if self.cut.sends_nothing or releases <= 0:
            return 0.0, 0.0
        mu = self.release_mu(image_shape, releases)
        return mu, gdp_epsilon(mu, delta)

    def bytes_per_row(self, image_shape, with_labels: Optional[bool] = None) -> int:
        """Bytes a client sends per image that crosses the cut (:meth:`Message.row_bytes`; ``with_labels``
        default: whether the conditioning sends labels)."""
        return self.message_type.row_bytes(image_shape, self.sends_labels if with_labels is None else with_labels)

    def row_fields(self) -> tuple[str, ...]:
        """Wire names of the per-row payload (without labels)."""
        return tuple(self.message_type.WIRE)


PROTOCOLS: Registry = Registry("protocol", Protocol, names=PROTOCOL_NAMES)
register = PROTOCOLS.register


def split_protocols() -> tuple[str, ...]:
    """The registered protocols that split the chain at a cut (every one but the federated baseline)."""
    return tuple(n for n in PROTOCOLS.names() if not PROTOCOLS.get(n).aggregates)


def make_protocol(kind: str, cut: Cut, fixed_noise: bool = False, conditioning: str = "none") -> Protocol:
    """The protocol ``kind`` for ``cut`` (UserError listing the known kinds for an unknown one);
    ``conditioning``: ``model.server_conditioning``."""
    return PROTOCOLS.get(kind)(cut, fixed_noise, conditioning)


def protocol_for(cfg, cut: Optional[Cut] = None) -> Protocol:
    """The protocol of a config (``protocol.kind`` at ``protocol.cut_ratio``, conditioned on
    ``model.server_conditioning``)."""
    return make_protocol(cfg.protocol.kind, cut or Cut.from_config(cfg), cfg.protocol.fixed_noise,
                         cfg.model.server_conditioning)  # fmt: skip


def check_config(cfg) -> None:
    """What only the registered protocol and schedule can judge (added to the config's validation)."""
    PROTOCOLS.get(cfg.protocol.kind).check_config(cfg)  # what only some protocols can do
    make_scheduler(cfg.diffusion)  # a schedule that does not end near pure noise is refused here
