"""Canaries of a privacy audit (ground truth: never in the server's view): their construction, their
insertion into a run's data and member sets, and the link from recorded rows to the slots.

An audit has ``m`` slots, slot ``i`` belonging to client ``i mod N`` (``--target server``) or to
client ``K`` (``--target client:K``), each decided by an independent fair coin (``eval/audit.py``
describes the game). Replace-one slots hold a canary ``x_i`` or its partner ``x'_i``; add/remove
slots hold ``x_i`` or nothing. The inserted images get dataset ids after the data set's own, and
``ground_truth/train`` records them like any image's: :func:`slot_rows` finds a slot's releases.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from collafuse_privacy.data import Dataset, Splits
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import load_tensors, save_tensors
from collafuse_privacy.run.layout import AUDIT_CANARIES

CANARY_KINDS = ("worst-case", "in-distribution")
LABEL_X, LABEL_ALT = 1, 0  # a replace-one canary's label: tied to its coin (Canaries.labels)
SERVER = "server"


def canaries_path(run_dir) -> Path:
    """Where an audit run keeps its canaries (``audit/canaries.safetensors``; ground truth)."""
    return Path(run_dir) / AUDIT_CANARIES


@dataclass(frozen=True)
class Canaries:
    """The slots of an audit (ground truth: never in the server's view).

    ``x`` ``[m, C, H, W]`` the canaries; ``alt`` their partners (replace-one) or None (add/remove);
    ``coin`` ``[m]`` bool: 1 = ``x`` was inserted; ``client`` ``[m]`` the client each slot belongs to;
    ``ids`` ``[m]`` the dataset id the inserted image has (-1 where nothing was inserted).
    """

    kind: str
    game: str  # "replace-one" | "add/remove"
    x: torch.Tensor
    alt: Optional[torch.Tensor]
    coin: torch.Tensor
    client: torch.Tensor
    ids: torch.Tensor
    seed: int = 0  # of the coins, the canaries and the calibration / evaluation halves
    labels_tied: bool = True  # False in canary files written before labels were tied to coins (labels 0)

    def __len__(self) -> int:
        return int(self.coin.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """The label each inserted slot's image carries ``[m]`` long: tied to the coin in the replace-one
        game (``x`` has label :data:`LABEL_X`, its partner :data:`LABEL_ALT`), so a view that carries labels
        (``model.server_conditioning = labels``) shows the coin through them, as the accounting must
        allow for; 0 in the add/remove game (presence is the coin there)."""
        if self.alt is None or not self.labels_tied:
            return torch.zeros(len(self), dtype=torch.long)
        return torch.where(self.coin, torch.tensor(LABEL_X), torch.tensor(LABEL_ALT)).long()

    @property
    def inserted(self) -> torch.Tensor:
        """The image each slot holds (``x`` or ``alt`` by the coin; ``x`` for add/remove)."""
        if self.alt is None:
            return self.x
        return torch.where(self.coin.view(-1, 1, 1, 1), self.x, self.alt)

    def save(self, path: Path) -> None:
        t = {"x": self.x, "coin": self.coin.to(torch.uint8), "client": self.client, "ids": self.ids}
        if self.alt is not None:
            t["alt"] = self.alt
        save_tensors(path, t, metadata={"kind": self.kind, "game": self.game, "seed": str(self.seed),
                                        "labels": "coin" if self.labels_tied else "zero"})  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> "Canaries":
        t = load_tensors(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        try:
            return cls(meta["kind"], meta["game"], t["x"].float(), t["alt"].float() if "alt" in t else None,
                       t["coin"].bool(), t["client"].long(), t["ids"].long(), int(meta["seed"]),
                       meta.get("labels", "zero") == "coin")  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path} is not an audit's canary file (missing {exc})") from None


def make_canaries(data: Dataset, splits: Splits, m: int, kind: str, target: str, seed: int) -> Canaries:
    """``m`` slots for ``target`` (``"server"``: replace-one over all clients; ``"client:K"``:
    add/remove in client ``K``), coins and canaries from ``seed``."""
    if kind not in CANARY_KINDS:
        raise UserError(f"canary kind must be one of {', '.join(CANARY_KINDS)}, got {kind!r}")
    if m < 4:
        raise UserError(f"an audit needs at least 4 canaries, got {m}")
    g = torch.Generator().manual_seed(seed % (2**63 - 1))
    C, S, _ = data.shape
    n_clients = splits.num_clients
    replace = target == SERVER
    if replace:
        client = torch.arange(m) % n_clients
    else:
        k = int(target.split(":")[1])
        if not 0 <= k < n_clients:
            raise UserError(f"--target {target}: the run has clients 0..{n_clients - 1}")
        client = torch.full((m,), k, dtype=torch.long)
    coin = torch.rand(m, generator=g) < 0.5
    if kind == "worst-case":
        x = torch.randint(0, 2, (m, C, S, S), generator=g).float() * 2 - 1
        alt = -x if replace else None
    else:
        pool = torch.tensor(sorted(i for h in splits.holdout for i in h), dtype=torch.long)
        need = 2 * m if replace else m
        if len(pool) < need:
            raise UserError(f"in-distribution canaries: {need} held-out images needed for {m} slots, the run's "
                            f"clients hold {len(pool)} (fewer --canaries, or worst-case ones)")  # fmt: skip
        pick = pool[torch.randperm(len(pool), generator=g)[:need]]
        x = data.images[pick[:m]].float()
        alt = data.images[pick[m:]].float() if replace else None
    # the inserted images get new ids after the dataset's, in slot order (add/remove: inserted slots only)
    ins = torch.ones(m, dtype=torch.bool) if replace else coin
    ids = torch.full((m,), -1, dtype=torch.long)
    ids[ins] = len(data) + torch.arange(int(ins.sum()))
    return Canaries(kind, "replace-one" if replace else "add/remove", x, alt, coin, client, ids, seed)


def appended(data: Dataset, can: Canaries) -> Dataset:
    """``data`` with the slots' inserted images (and their labels) appended, in slot order: they
    take the ids ``can.ids`` names."""
    ins = can.ids >= 0
    return dataclasses.replace(data, images=torch.cat([data.images, can.inserted[ins].to(data.images.dtype)]),
                               labels=torch.cat([data.labels, can.labels[ins].to(data.labels.dtype)]))  # fmt: skip


def insert(data: Dataset, splits: Splits, can: Canaries) -> tuple[Dataset, Splits]:
    """The dataset with the inserted canaries appended and the slots added to their clients' members."""
    ins = can.ids >= 0
    clients = []
    for k, c in enumerate(splits.clients):
        extra = can.ids[ins & (can.client == k)].tolist()
        clients.append(dataclasses.replace(c, members=list(c.members) + extra))
    return appended(data, can), dataclasses.replace(splits, clients=clients)


def with_canaries(run_dir, data: Dataset) -> Dataset:
    """``data`` as the audit run in ``run_dir`` trained on it (unchanged for an ordinary run): the
    one place the eval side rebuilds an audit run's dataset."""
    path = canaries_path(run_dir)
    if not path.is_file():
        return data
    return appended(data, Canaries.load(path))


def slot_rows(can: Canaries, row_ids: torch.Tensor) -> dict[int, list[int]]:
    """``{slot: [row, ...]}``: the recorded rows (positions in the view) that released each slot's
    inserted image, linked by their ground-truth image ids ``row_ids`` ``[N]``; slots never released
    are absent."""
    slot_of = {int(i): s for s, i in enumerate(can.ids.tolist()) if i >= 0}
    rows_by_slot: dict[int, list[int]] = {}
    for r, i in enumerate(row_ids.tolist()):
        s = slot_of.get(int(i))
        if s is not None:
            rows_by_slot.setdefault(s, []).append(r)
    return rows_by_slot
