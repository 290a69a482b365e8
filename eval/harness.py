"""The skeleton the attack runners share (:mod:`.membership`, :mod:`.reconstruction`, :mod:`.audit`).

Each runner scores registered attacks on one run the same way:

1. check what was asked (method names and options against the family's registry, caps) and that
   the run's ``metrics/`` and ``figures/`` can be written, before anything is computed;
2. open the run for scoring (:class:`ScoredRun`): the server's view (verified on load) and, apart
   from it, the ground truth the attacks never see (splits, clean images, the image id of every
   recorded row), read once;
3. run each method in turn (:func:`attempts`): timed, and a method that does not apply to the
   view (``NotApplicable``) is recorded with its reason instead of failing the run;
4. write the figures and scores files first, then the typed ``metrics/<name>.json`` that names
   their sha256 (:meth:`ScoredRun.digests`), atomically (``RunDir.write_metrics``): files of an
   interrupted rerun beside it are recognised as not its own.

The runners keep what differs: which candidates or rows are scored, and how.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from collafuse_privacy.attacks.base import Family, NotApplicable, check_family_options
from collafuse_privacy.checkpoint import sha256
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import check_writable
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.layout import FIGURES, METRICS_DIR
from collafuse_privacy.view import ServerView

from .ground_truth import load_ground_truth, message_image_ids

OUTPUT_FOLDERS = (METRICS_DIR, FIGURES)


@dataclass(frozen=True)
class Attempt:
    """One method's turn: what it returned (``output``) and how long it took, or, when it does not
    apply to the view, the one-line ``reason`` (``output`` is then None)."""

    name: str
    output: Any = None
    seconds: float = 0.0
    reason: Optional[str] = None

    @property
    def applicable(self) -> bool:
        return self.reason is None


def checked_methods(family: Family, methods: Optional[Iterable[str]], options: Optional[dict],
                    cap: Optional[int] = None) -> tuple[list[str], dict[str, dict]]:  # fmt: skip
    """``(names, options)``: the requested methods (default: the family's defaults) and their
    constructor options, checked against the registry (UserError naming the known ones);
    ``cap`` (candidates or rows scored), when given, must be at least 1."""
    names = family.resolve(methods)
    options = dict(options or {})
    check_family_options(family, options, names)
    if cap is not None and cap < 1:
        raise UserError(f"cap must be at least 1, got {cap}")
    return names, options


def attempts(names: Iterable[str], attempt: Callable[[str], Any], log: Optional[Callable[[str], None]] = None,
             indent: str = "") -> Iterator[Attempt]:  # fmt: skip
    """Run ``attempt(name)`` for each method in order, timing it; a ``NotApplicable`` it raises
    becomes an :class:`Attempt` with its reason (logged as ``"<indent><name>: not applicable
    (<reason>)"`` when ``log`` is given). The caller's work on each yielded attempt is not timed."""
    for name in names:
        t0 = time.perf_counter()
        try:
            out = attempt(name)
        except NotApplicable as exc:
            if log is not None:
                log(f"{indent}{name}: not applicable ({exc.reason})")
            yield Attempt(name, seconds=time.perf_counter() - t0, reason=exc.reason)
            continue
        yield Attempt(name, out, time.perf_counter() - t0)


class ScoredRun:
    """A trained run opened for scoring: ``rd`` (its :class:`RunDir`), ``path``, the server's view
    and the ground truth, each read when first asked for."""

    def __init__(self, run_dir: str | Path):
        self.rd = RunDir(run_dir)
        self.path = self.rd.path
        self._truth = None

    def check_writable(self, folders: Iterable[str] = OUTPUT_FOLDERS) -> None:
        """Fail now, naming the folder, when an output folder cannot be written (a read-only run)."""
        for folder in folders:
            check_writable(self.path / folder)

    def view(self, release_clients: tuple[int, ...] = ()) -> ServerView:
        """The server's view, verified (manifest, checkpoint, config); ``release_clients``: clients
        whose trained model was released to the server."""
        return ServerView.load(self.path, release_clients=release_clients)

    def ground_truth(self):
        """``(cfg, splits, dataset)``: the run's config, splits and images (an audit run's with its
        canaries); never given to an attack."""
        if self._truth is None:
            self._truth = load_ground_truth(self.path)
        return self._truth

    def image_ids(self, n_rows: Optional[int] = None):
        """The image id of every recorded training row ``[N]``, in view order (:func:`message_image_ids`)."""
        return message_image_ids(self.path, n_rows)

    def digests(self, rels: Iterable[str]) -> dict[str, str]:
        """``{relative path: sha256}`` of files written for a metrics file, which names them."""
        return {rel: sha256(self.path / rel) for rel in rels}

    def write(self, name: str, report):
        """Write ``metrics/<name>.json`` (typed, atomic) and return ``report``."""
        self.rd.write_metrics(name, report)
        return report


def pyplot():
    """matplotlib's ``pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
