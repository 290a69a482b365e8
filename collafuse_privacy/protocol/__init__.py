"""What crosses the cut, in one place (DESIGN.md §1): :class:`Cut`, the messages and
the registered protocols (``shared-noise``, ``cut-image``).

    cut = Cut.from_config(cfg)                     # t_c, hand-over level, tail schedule
    proto = make_protocol(cfg.protocol.kind, cut, cfg.protocol.fixed_noise)   # or protocol_for(cfg)
    msg = proto.encode(k, x0, t, eps, ids=ids, secret=s)     # client side
    x_t, t, target = proto.server_batch([msg], gen, device)  # server side
"""

from .base import PROTOCOLS, ModelRange, Protocol, make_protocol, protocol_for, register  # noqa: F401
from .cut import Cut  # noqa: F401
from .messages import CutImageMessage, Message, SharedNoiseMessage, Transport, from_tensors  # noqa: F401

# Importing a protocol's module registers it.
from . import shared_noise, cut_image  # noqa: E402,F401
