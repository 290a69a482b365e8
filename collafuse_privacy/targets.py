"""Attack targets, ``"server"`` or ``"client:K"``, parsed in one place.

``"server"``: the server's view and model; ``"client:K"``: client ``K``'s released model (under
fedavg, client ``K``'s last upload, which is in the server's view). Membership
attacks, the audit, sweeps and the CLI all parse a target with :func:`parse_target`.
"""

from __future__ import annotations

import re
from typing import Optional

from .errors import UserError

SERVER = "server"
_CLIENT_RE = re.compile(r"^client:(\d+)$")


def parse_target(target: str, what: str = "--target") -> tuple[str, Optional[int]]:
    """``"server"`` -> ``("server", None)``; ``"client:K"`` -> ``("client", K)``; else UserError naming ``what``."""
    if target == SERVER:
        return SERVER, None
    m = _CLIENT_RE.match(str(target))
    if not m:
        raise UserError(f"{what} must be 'server' or 'client:K' with K a client number, got {target!r}")
    return "client", int(m.group(1))


def target_name(kind: str, client: Optional[int]) -> str:
    """The inverse of :func:`parse_target`."""
    return SERVER if kind == SERVER else f"client:{client}"
