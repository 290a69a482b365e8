"""Secrets the clients hold and the server cannot derive (DESIGN.md §2).

Everything random on the clients' side comes from one 62-bit ``root``: the data split
(``split``), and per client its timestep/noise draws, its batch order, the order of
the rows in its messages, its fixed hand-over noise, its DP-SGD noise, its model's
initialisation and its part of sampling (``client(k, seed)``). The root is drawn
from the operating system when a run (or a sweep) is created and stored in
``clients/secrets.json``, beside the run and outside the server's view; a resumed
run reads it back, so it stays bit-identical.

Nothing in ``server_view/`` is a function of it, so a server that knows the config,
the seed and the public dataset cannot rebuild the split (exact membership), the
fixed hand-over noise (exact reconstruction) or the DP noise by brute force
(tests/test_secrets.py tries). ``secrets.derive_from_seed: true`` derives the root
from ``seed`` instead: a run is then reproducible from its config alone (tests, the
demo), and every report made that way says that such a server could rebuild it.
"""

from __future__ import annotations

import hashlib
import secrets as _os_secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Config
from .run.codec import read_json, write_json
from .run.layout import SECRETS
from .errors import UserError


def mix(*parts) -> int:
    """A 62-bit integer from several integers / strings (sha256: no part can be solved for)."""
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 2


@dataclass(frozen=True)
class Secrets:
    """``clients/secrets.json``: the clients' root secret and how it was made."""

    root: int
    derived_from_seed: bool
    schema: int = 1

    @property
    def split(self) -> int:
        """Seed of the public / client / member / held-out split (derived from the seed: the seed
        itself, so that such runs keep the split, and with it the FID extractor, they always had)."""
        return self.root if self.derived_from_seed else mix("split", self.root)

    def client(self, k: int, seed: int) -> int:
        """Client ``k``'s secret for training seed ``seed``."""
        return mix("client", self.root, int(k), int(seed))


def make_secrets(cfg: Config) -> Secrets:
    """Fresh secrets for a new run: from the OS, or from ``seed`` with ``secrets.derive_from_seed``."""
    if cfg.secrets.derive_from_seed:
        return Secrets(root=int(cfg.seed), derived_from_seed=True)
    return Secrets(root=_os_secrets.randbits(62), derived_from_seed=False)


def secrets_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SECRETS


def read_secrets(run_dir: str | Path) -> Optional[Secrets]:
    path = secrets_path(run_dir)
    return read_json(path, Secrets) if path.is_file() else None


def write_secrets(run_dir: str | Path, s: Secrets) -> None:
    write_json(secrets_path(run_dir), s)


def secrets_for(cfg: Config, run_dir: Optional[str | Path] = None, given: Optional[Secrets] = None) -> Secrets:
    """The secrets of the run in ``run_dir`` if it has some, else ``given``, else new ones.

    A run keeps the secrets it was created with; a config that asks for seed-derived secrets
    and a run that holds OS secrets (or the reverse) do not mix.
    """
    held = read_secrets(run_dir) if run_dir is not None else None
    s = held or given or make_secrets(cfg)
    if s.derived_from_seed != cfg.secrets.derive_from_seed:
        where = f"{run_dir}/{SECRETS}" if held else "the secrets given"
        raise UserError(f"{where} {'were' if s.derived_from_seed else 'were not'} derived from the seed, but the "
                        f"config says secrets.derive_from_seed={str(cfg.secrets.derive_from_seed).lower()}")  # fmt: skip
    return s
