"""``fedavg``: the federated baseline a user would otherwise pick (McMahan et al. 2017; issue 26).

Nothing of an image crosses: every client trains the whole DDPM chain on its own members (the
cut at ``t_c = T``, so a client's round is CollaFuse's round at ``c = 1``). Every
``train.local_steps`` rounds, and at the last, each client uploads its model's parameters and
its member count (:class:`~.messages.UploadMessage`); the server averages them weighted by the
member counts (FedAvg), keeps the average as its own (global) model, and sends it back, and
every client continues from it. The server's view is the uploads (one row per client and
upload, with the envelope ``(client, round)``) and the global models; nothing else.

What the view bounds: without DP-SGD nothing (a model can memorise its training images: the
view's epsilon is infinite). With DP-SGD clients (Opacus) every upload is a post-processing
of the client's DP-SGD run, so the view of a client's members is bounded by that client's
DP-SGD epsilon (add/remove one member image, the accountant's adjacency), which
``metrics/privacy.json`` reports for the view.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from .base import ModelRange, Protocol, register
from .messages import UploadMessage


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """``model``'s parameters flattened into one float32 vector (``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def load_flat(model: torch.nn.Module, w: torch.Tensor) -> None:
    """Copy :func:`flat_parameters`' vector ``w`` into ``model``'s parameters, in place (not
    ``vector_to_parameters``, which would make the parameters views of ``w``: every model loaded
    from one vector would then share its storage)."""
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(w[i : i + p.numel()].view_as(p))
            i += p.numel()
    if i != w.numel():
        raise ValueError(f"a vector of {w.numel()} parameters for a model of {i}")


@register("fedavg")
class FedAvg(Protocol):
    message_type = UploadMessage
    aggregates = True

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        bad = []
        if cfg.protocol.cut_ratio != 1.0:
            bad.append("protocol.cut_ratio=1 (every client trains the whole chain; nothing of an image crosses)")
        if cfg.protocol.target_epsilon is not None:
            bad.append("protocol.target_epsilon=null (it picks a cut; fedavg has none)")
        if cfg.model.server_conditioning != "none":
            bad.append("model.server_conditioning=none (the global model is every client's model)")
        if cfg.model.client_preset not in (None, cfg.model.preset):
            bad.append("model.client_preset=null (the clients' models are averaged into the server's: one architecture)")
        if bad:
            raise UserError("protocol.kind=fedavg needs " + "; ".join(bad))

    def encode(self, client, x0, t, eps, *, ids, secret, labels=None):
        raise ValueError("fedavg sends no image rows: a client uploads its model (FedAvg.upload)")

    def upload(self, client: int, model: torch.nn.Module, members: int) -> UploadMessage:
        """Client ``client``'s upload: its model's parameters and its member count."""
        return self.upload_of(client, flat_parameters(model), members)

    @staticmethod
    def upload_of(client: int, w: torch.Tensor, members: int) -> UploadMessage:
        """The upload of flat parameters ``w`` (``[P]``) and a member count, as a deployment's
        transport delivers them (Flower's FedAvg: an ``ArrayRecord`` and ``num-examples``)."""
        return UploadMessage(client, None, w=w.reshape(1, -1), n=torch.tensor([int(members)], dtype=torch.int64))

    @staticmethod
    def average(msgs: list[UploadMessage]) -> torch.Tensor:
        """FedAvg: the uploads' parameters averaged with weights ``n_k / sum n``; float32 ``[P]``.

        The arithmetic of Flower's own FedAvg (``flwr.serverapp.strategy_utils.aggregate_arrayrecords``),
        step for step, so that an in-process run and a Flower run give the same bits: each weight is
        a Python float (the exact ratio of the integer counts, rounded once), each upload is
        multiplied by it in float32 and the products are summed in float32, in client order.
        """
        counts = [int(m.n.reshape(-1)[0]) for m in msgs]
        total = sum(counts)
        acc = None
        for m, n in zip(msgs, counts):
            term = m.w[0] * (n / total)  # float32 array times a Python float: float32, as numpy's
            acc = term if acc is None else acc.add_(term)
        return acc

    # ---- the view --------------------------------------------------------------------
    def no_image_rows(self):
        return ("the fedavg view holds the clients' uploaded models, not images: attacks on image rows do not "
                "apply (update inversion, GIDM, is not built yet: issue 26)")

    def level_range(self):
        raise ValueError("the fedavg view holds model uploads, not images")

    def row_levels(self, messages):
        raise ValueError("the fedavg view holds model uploads, not images")

    def model_range(self, target: str) -> ModelRange:
        """The global (server) model and every client's model cover the whole chain."""
        return ModelRange(0, self.cut.abar, 0.0)

    def release_mu(self, image_shape, releases=1, sensitivity_l2=None):
        """No GDP bound on what a trained model's weights reveal of its images (DP-SGD bounds it:
        ``privacy.json`` reports the client's DP-SGD epsilon for the view instead)."""
        return math.inf if releases > 0 else 0.0

    def view_privacy(self, image_shape, releases, delta):
        return (math.inf, math.inf) if releases > 0 else (0.0, 0.0)

    def bytes_per_upload(self, params: int) -> int:
        """Bytes one upload costs on the wire: float32 parameters and an int64 member count."""
        return 4 * int(params) + 8
