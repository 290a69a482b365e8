"""``collafuse-privacy evaluate``: quality per client, the paper's disclosure figures, burden.

For a trained run it computes, per client and pooled, FID and KID of collaborative
samples against that client's held-out images; and the same for the two ends of
the sweep on the same data and seed, local-only (``c = 1``) and server-only
(``c = 0``), trained as sibling runs ``<run>-c1`` and ``<run>-c0`` (resumable) unless
``ends=False``. Every figure names its feature extractor (and the sha256 of its weights);
one extractor is used for the whole table. Every FID and KID has a 95% bootstrap interval
over samples (eval/quality.py), and the table has a floor row: each client's members (a
seeded subset, as many as the samples scored) against its held-out images, same
extractor, same n: what real images of the same distribution score. Also the disclosure figures (KID and mean pixel MSE between what the
server saw, in training and at inference, and each client's member images) and the
client burden. Writes ``metrics/quality.json`` and ``metrics/burden.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from collafuse_privacy.io import check_writable
from collafuse_privacy.lock import locks_run
from collafuse_privacy.checkpoint import verified_step_dir
from collafuse_privacy.client_secrets import read_secrets
from collafuse_privacy.config import with_overrides
from .ground_truth import load_ground_truth

from collafuse_privacy.party import resolve_device
from collafuse_privacy.protocol import protocol_for
from collafuse_privacy.numbers import fmt_interval
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.layout import METRICS_DIR
from collafuse_privacy.run.schemas import (QUALITY_FORMAT, ClientDisclosure, ClientQuality, DisclosureFigures,
                                           PooledQuality, QualityFloor, QualityReport, QualityRun)
from collafuse_privacy.errors import UserError
from collafuse_privacy.sampling import load_models, read_samples, sample_run
from collafuse_privacy.training import train
from collafuse_privacy.view import ServerView

from .burden import measure_burden
from .features import get_extractor
from .quality import KID_SCALE, KID_UNIT, Features, compute_fid, compute_kid, disclosure_figures, extract

FLOOR_LABEL = "floor: members vs held-out"
# The disclosure KID averages subsets of 1000 of up to 5000 server images (torchmetrics draws
# them): 20 subsets give its mean within about a fifth of the subset spread (kid_std, which the
# table keeps), at a fifth of the cost of torchmetrics' default 100 (10 s a cell on one CPU thread).
DISCLOSURE_KID_SUBSETS = 20


def _samples(run_dir: Path, n: int, device: str) -> torch.Tensor:
    """``[K, n, C, S, S]`` samples of the run's last complete ``sample`` (sampling first when there
    is none or it has fewer than ``n``); UserError when they must not be scored."""
    cfg = RunDir(run_dir).config()
    try:
        have, manifest = read_samples(run_dir)
        if len(have) < cfg.data.clients or manifest.n < n:
            raise UserError("too few samples")
    except UserError:
        sample_run(run_dir, n=n, device=device)
        have, manifest = read_samples(run_dir)
    problem = manifest.stats.problem()
    if problem:
        raise UserError(f"{run_dir}: quality is not measured: {problem}")
    return torch.stack([have[k][:n] for k in range(cfg.data.clients)])


def _quality_row(samples, holdout: list[Features], pooled_real: Features, extractor, seed: int):
    """Per-client and pooled FID/KID (with bootstrap intervals) of ``samples`` (``K`` image sets
    ``[n_k, C, S, S]``) against the held-out features."""
    per_client = []
    fakes = []
    for k, real in enumerate(holdout):
        fake = extract(samples[k], extractor)
        fakes.append(fake)
        fid = compute_fid(fake, real, extractor, seed=seed)
        kid = compute_kid(fake, real, extractor, seed=seed)
        per_client.append(ClientQuality(client=k, fid=fid.fid, kid=kid.kid_mean, kid_std=kid.kid_std,
                                        n_samples=fid.n_fake, n_real=fid.n_real, kid_note=kid.note, fid_ci=fid.ci,
                                        kid_ci=kid.ci))  # fmt: skip
    fake = Features.cat(fakes)
    fid = compute_fid(fake, pooled_real, extractor, seed=seed)
    kid = compute_kid(fake, pooled_real, extractor, seed=seed)
    pooled = PooledQuality(fid=fid.fid, kid=kid.kid_mean, kid_std=kid.kid_std, n_samples=len(fake),
                           n_real=len(pooled_real), fid_ci=fid.ci, kid_ci=kid.ci)  # fmt: skip
    return per_client, pooled


def floor_images(members: list[torch.Tensor], n: int, seed: int) -> list[torch.Tensor]:
    """A seeded subset of ``n`` of each client's member images (all of them if it has fewer):
    indices are sorted and data sets such as mnist5k are ordered by class, so not the first n."""
    g = torch.Generator().manual_seed(seed)
    return [m[torch.randperm(len(m), generator=g)[:n]] for m in members]


@locks_run
def evaluate_run(
    run_dir: str | Path,
    n: Optional[int] = None,
    extractor: str = "auto",
    ends: bool = True,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict:
    """Quality (with its floor), the disclosure figures and the client burden of a trained run
    (module docstring); writes ``metrics/quality.json`` and ``metrics/burden.json`` and returns
    ``{"quality": QualityReport, "burden": BurdenReport}``. ``n``: samples per client (default
    ``sample.n``); ``ends``: also train and score the ``c = 1`` and ``c = 0`` siblings."""
    rd = RunDir(run_dir)
    run_dir = rd.path
    cfg = rd.config()
    verified_step_dir(rd)  # a trained run, its checkpoint intact
    n = n or cfg.sample.n
    dev = str(resolve_device(device))
    check_writable(run_dir / METRICS_DIR)
    _, splits, ds = load_ground_truth(run_dir)
    ext, note = get_extractor(extractor, dataset=ds, device=dev)
    log(note)
    # The reference features: every client's held-out images, extracted once for all runs compared.
    holdout = [extract(ds.images[torch.tensor(h, dtype=torch.long)], ext) for h in splits.holdout]
    pooled_real = Features.cat(holdout)
    members = [ds.images[torch.tensor(m, dtype=torch.long)] for m in splits.members]
    quality_runs = []
    for (c, kind), r in sorted(_runs_compared(cfg, run_dir, ends, dev, log).items()):
        per_client, pooled = _quality_row(_samples(r, n, dev), holdout, pooled_real, ext, cfg.seed)
        quality_runs.append(QualityRun(cut_ratio=c, t_c=RunDir(r).config().t_c, run_dir=str(r),
                                       per_client=per_client, pooled=pooled, protocol=kind))  # fmt: skip
    disclosure = _disclosures(ServerView.load(run_dir), members, ext, cfg.seed)
    per_client, pooled = _quality_row(floor_images(members, n, cfg.seed), holdout, pooled_real, ext, cfg.seed)
    floor = QualityFloor(label=FLOOR_LABEL, per_client=per_client, pooled=pooled)
    quality = QualityReport(extractor=ext.name, extractor_sha256=ext.sha256, extractor_note=note,
                            n_samples_per_client=n, runs=quality_runs, floor=floor, disclosure=disclosure,
                            format=QUALITY_FORMAT)  # fmt: skip
    rd.write_metrics("quality", quality)

    server, clients, _ = load_models(run_dir, cfg, torch.device("cpu"))
    burden = measure_burden(cfg, server, clients[0], run_dir)
    rd.write_metrics("burden", burden)
    return {"quality": quality, "burden": burden}


def _runs_compared(cfg, run_dir: Path, ends: bool, dev: str,
                   log: Callable[[str], None]) -> dict[tuple[float, str], Path]:  # fmt: skip
    """``{(cut ratio, protocol.kind): run directory}``: the run, and with ``ends`` the two ends of the
    sweep, trained as siblings ``<run>-c1`` / ``<run>-c0`` (same data, seed, steps and clients;
    resumable). A fedavg run's ends are the split protocol's (``cut-image``) at c = 1 and c = 0."""
    kind = cfg.protocol.kind
    runs = {(cfg.protocol.cut_ratio, kind): run_dir}
    split = "cut-image" if protocol_for(cfg).aggregates else kind
    if ends:
        for c, tag in ((1.0, "c1"), (0.0, "c0")):
            if (c, split) in runs:
                continue
            sib = run_dir.parent / f"{run_dir.name}-{tag}"
            log(f"training the c = {c:g} end of the sweep in {sib} (same data, seed and steps; resumable)")
            train(with_overrides(cfg, [f"protocol.kind={split}", f"protocol.cut_ratio={c}", "protocol.target_epsilon=null"]),
                  sib, device=dev, secrets=read_secrets(run_dir))  # the same clients: the same split and draws
            runs[(c, split)] = sib
    return runs


def _disclosures(view: ServerView, members: list[torch.Tensor], ext, seed: int) -> list[ClientDisclosure]:
    """The paper's disclosure figures per client: what the server saw (in training, at inference)
    against the client's own member images."""
    disclosure = []
    for k in range(len(members)):
        training = inference = None
        if view.messages and view.protocol.no_image_rows() is None:  # fedavg's rows are models, not images
            sel = view.messages["client"] == k
            training = _disclosure(view.messages["x"][sel], members[k], ext, seed)
        if view.handover is not None:
            sel = view.handover["client"] == k
            inference = _disclosure(view.handover["h"][sel], members[k], ext, seed)
        disclosure.append(ClientDisclosure(client=k, training=training, inference=inference))
    return disclosure


def _disclosure(server_images: torch.Tensor, client_images: torch.Tensor, ext, seed: int,
                cap: int = 5000) -> DisclosureFigures:  # fmt: skip
    if len(server_images) < 2:
        return DisclosureFigures(unavailable=f"only {len(server_images)} server images recorded for this client")
    if len(server_images) > cap:  # a seeded subset keeps KID affordable; the MSE uses the same subset
        g = torch.Generator().manual_seed(seed)
        server_images = server_images[torch.randperm(len(server_images), generator=g)[:cap]]
    d = disclosure_figures(server_images.float(), client_images, ext, kid_subsets=DISCLOSURE_KID_SUBSETS, seed=seed)
    return DisclosureFigures(kid=d.kid.kid_mean, kid_std=d.kid.kid_std, pixel_mse=d.pixel_mse, n_server=d.n_server,
                             n_client=d.n_client)  # fmt: skip


def format_tables(result: dict) -> str:
    """The quality, disclosure and burden tables of :func:`evaluate_run`'s result (plain text)."""
    q, b = result["quality"], result["burden"]
    lines = [f"quality ({q.extractor}, weights sha256 {q.extractor_sha256[:12]}; {q.n_samples_per_client} samples per "
             f"client vs its held-out images; 95% bootstrap intervals over samples; {KID_UNIT})"]  # fmt: skip
    cols = [f"FID client {r.client}" for r in q.runs[0].per_client] + ["FID pooled", f"{KID_UNIT} pooled"]
    rows = [[f"{run.protocol} " * (run.protocol == "fedavg") + f"{run.cut_ratio:g}", str(run.t_c)] + _quality_cells(run)
            for run in q.runs]  # fmt: skip
    rows.append([q.floor.label, ""] + _quality_cells(q.floor))
    widths = [max(len(x), 24) for x in cols]
    lead = max(5, max(len(r[0]) for r in rows))
    lines.append(f"{'c':>{lead}} {'t_c':>5} " + " ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for r in rows:
        lines.append(f"{r[0]:>{lead}} {r[1]:>5} " + " ".join(f"{c:>{w}}" for c, w in zip(r[2:], widths)))
    lines.append("disclosure (server images vs the client's members; lower = closer to the private data)")
    for d in q.disclosure:
        parts = []
        for where in ("training", "inference"):
            fig = getattr(d, where)
            if fig is not None and fig.kid is not None:
                parts.append(f"{where}: {KID_UNIT} {fig.kid * KID_SCALE:.4g}, pixel MSE {fig.pixel_mse:.4f} "
                             f"(n={fig.n_server})")  # fmt: skip
        lines.append(f"  client {d.client}: " + ("; ".join(parts) if parts else "nothing recorded"))
    lines.append(f"client burden (t_c = {b.t_c} of T = {b.timesteps}; ratios to local-only)")
    lines.append(f"  sampling: FLOPs/image {b.sampling_client_flops_per_image:.3g} (ratio {b.sampling_flop_ratio:.3f}), "
                 f"wall {b.sampling_client_seconds_per_image * 1e3:.2f} ms/image (ratio {b.sampling_time_ratio:.3f})")
    lines.append(f"  training: FLOPs/image {b.training_flops_per_image:.3g} (ratio {b.training_flop_ratio:.3f}), "
                 f"wall {b.training_seconds_per_image * 1e3:.2f} ms/image (ratio {b.training_time_ratio:.3f})")
    lines.append(f"  bytes sent per training image {b.bytes_sent_per_training_image:.0f}, "
                 f"received per sample {b.bytes_received_per_sample}")
    return "\n".join(lines)


def _quality_cells(row) -> list[str]:
    """``value [lo, hi]`` cells of one quality row (a QualityRun or the QualityFloor): FID per client,
    FID pooled, KID pooled (scaled to its printed unit)."""
    fids = [fmt_interval(c.fid_ci, ".2f") for c in row.per_client] + [fmt_interval(row.pooled.fid_ci, ".2f")]
    kid = row.pooled.kid_ci
    kid = None if kid is None else {k: getattr(kid, k) * KID_SCALE for k in ("value", "lo", "hi")}
    return fids + [fmt_interval(kid, ".4g")]
