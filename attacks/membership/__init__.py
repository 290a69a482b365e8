"""Membership-inference attacks on the server view (DESIGN.md §3), one file per method.

Registry (:mod:`.base`): ``view-lrt``, ``view-composed``, ``loss``, ``secmi``, ``pia``, and
``lira`` and ``rmia`` (reference models; run when asked for by name). Each is
``fit(view) -> self``; ``score(view, candidates [M, C, H, W] in [-1, 1], client) -> [M]``,
higher = more likely member; :class:`NotApplicable` when it cannot run on a view.
"""

from .base import FAMILY, MembershipAttack, NotApplicable, get, make, names, parse_target, register  # noqa: F401
from . import view_lrt, composed, loss, secmi, pia, lira, rmia  # noqa: F401,E402  (registration order = default order)
