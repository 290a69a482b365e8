"""What crosses the cut, in one place (DESIGN.md §1): :class:`Cut`, the messages, what the server
model is conditioned on, and the registered protocols (``shared-noise``, ``cut-image``).

    cut = Cut.from_config(cfg)                     # t_c, hand-over level, tail schedule
    proto = make_protocol(cfg.protocol.kind, cut, cfg.protocol.fixed_noise,
                          cfg.model.server_conditioning)          # or protocol_for(cfg)
    rows = proto.shuffle_rows(t >= cut.t_c, order_gen)            # client side: which rows, in what order
    msg = proto.encode(k, x0[rows], t[rows], eps[rows], ids=ids[rows], secret=s, labels=y[rows])
    msg = proto.decode(k, msg.tensors())                          # what a network transport rebuilds
    x_t, t, target, labels = proto.model_inputs([msg], gen, device)   # server side
"""

from ..config import add_check
from .base import (PROTOCOLS, ModelRange, Protocol, check_config, make_protocol, protocol_for, register,  # noqa: F401
                   split_protocols)  # fmt: skip
from .conditioning import CONDITIONINGS, Conditioning, make_conditioning  # noqa: F401
from .cut import Cut, noised  # noqa: F401
from .messages import ENVELOPE, CutImageMessage, Message, SharedNoiseMessage, Transport, UploadMessage  # noqa: F401

# Importing a protocol's module registers it.
from . import shared_noise, cut_image, fedavg  # noqa: E402,F401

add_check(check_config)  # the config's validation asks the registered protocol (config/validate.py)
