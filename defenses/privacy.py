"""A run's formal privacy: ``metrics/privacy.json`` and the ``privacy`` CLI table.

Two guarantees, side by side (DESIGN.md §4):

* ``view``: the server's view of one image as a Gaussian mechanism (GDP release
  accounting, :mod:`.accounting`): ``mu``, ``epsilon`` at ``delta``, releases per
  image (1 with ``fixed_noise``; otherwise the most times any member image
  actually crossed the cut, counted during training), ``inf`` for shared-noise.
* ``unlinked``: the same view for the server of our threat model, which cannot know in which
  rounds an image was drawn (secret batch draws and timesteps) but may recognise its row when
  present (:mod:`.unlinked`): the exact secret-sampling bound, replace-one; add/remove infinite
  (a row's presence reveals the image); None with a one-line reason where an assumption fails.
  ``view`` is the "linked" number (the server attributes every release), each with its threat line.
* ``client_dp``: DP-SGD epsilon of each client's model (Opacus accountant), what
  protects a client when it releases its model or its samples.

The file's schema is :class:`collafuse_privacy.run.schemas.privacy.PrivacyReport` (infinite numbers as
the string ``"inf"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..lock import locks_run
from ..config import Config
from ..errors import UserError
from ..numbers import fmt
from ..run.directory import RunDir
from ..run.layout import STATE, step_of
from ..run.schemas.privacy import DPSGD_ADJACENCY, FEDAVG_THREAT
from ..run.schemas import (ClientDPEntry, ClientDPReport, CutChoice, PrivacyReport, ReleasePrivacy, UnlinkedClient,
                           UnlinkedPrivacy, ViewPrivacy)
from ..resolve import planned_releases
from .accounting import INF, dp_sgd_epsilon, release_mu, sensitivity
from ..protocol import protocol_for
from ..protocol.accountant import releases_per_image
from ..resolve import view_delta
from .unlinked import ADD_REMOVE_REASON, refusal_for, server_draw_probability, view_unlinked
from ..io import load_state
from ..checkpoint import TrainingState, verified_step_dir


SEED_SECRETS_WARNING = ("secrets.derive_from_seed: the clients' secrets were derived from the config's seed, so a "
                        "server that guesses the seed could rebuild their split, noise and DP noise: these numbers "
                        "hold only for a server that cannot (a reproducibility setting, not a deployment)")


def compute_privacy(
    cfg: Config,
    image_shape,
    *,
    release_counts=None,
    dp_states: Optional[list[dict]] = None,
    n_members: list[int],
    steps: int,
    cut_choice: Optional[CutChoice] = None,
) -> PrivacyReport:
    """The privacy report of a run (see the module docstring for the schema).

    ``image_shape`` (C, H, W); ``release_counts``: per client a [n] tensor of how often
    each member image crossed the cut (None: unknown, the planned bound is used);
    ``dp_states``: per client ``DPSGD.state_dict()`` (None without DP-SGD);
    ``n_members``: member images per client; ``steps``: rounds run.
    """
    p = cfg.protocol
    proto = protocol_for(cfg)
    if proto.aggregates:
        return _aggregated_privacy(cfg, image_shape, dp_states, n_members, steps, cut_choice)
    cut = proto.cut
    delta = view_delta(cfg)
    B, n_min = cfg.train.batch_size, min(n_members)
    if release_counts is not None:
        releases = releases_per_image(release_counts, p.fixed_noise)
        how, fail = "counted during training", 0.0
    else:
        releases, fail = planned_releases(cfg, n_members, steps)
        how = "bound from the rounds run (counts not recorded)"
    mu, eps = proto.view_privacy(image_shape, releases, delta)
    mu1, eps1 = proto.view_privacy(image_shape, 1, delta)
    D = sensitivity(image_shape)
    if cut.sends_nothing:
        note = "c = 1: nothing crosses the cut"
    elif proto.sends_noise:
        note = f"{proto.name} sends eps beside x_t: the server recovers x0 exactly (epsilon infinite)"
    elif cut.sends_clean:
        note = "c = 0: the server receives the clean images (epsilon infinite)"
    elif proto.sends_labels:
        note = (f"model.server_conditioning = labels: every release carries its image's label in the clear; under "
                f"the view's replace-one adjacency a replaced label is seen exactly, so no finite epsilon holds "
                f"(the images alone would give mu = {release_mu(cut.abar_handover, image_shape, releases):.4g} per image, "
                f"a bound only for replacements within one class)")  # fmt: skip
    else:
        note = (
            f"{proto.name}: each release h is a Gaussian mechanism, mu = sqrt(abar/(1-abar)) * D with "
            f"abar at the hand-over level = {cut.abar_handover:.4g}, worst-case L2 sensitivity D = 2 sqrt(d) = {D:.4g}; "
            f"{releases} release(s) per image ({'fixed noise: re-sends repeat the same h' if p.fixed_noise else how}) "
            "compose to sqrt(R) * mu"
        )
    view = ViewPrivacy(mu=mu, epsilon=eps, delta=delta + fail, releases_per_image=releases, fixed_noise=p.fixed_noise,
                       per_release=ReleasePrivacy(mu1, eps1), epochs=steps * B / n_min if n_min else 0.0,
                       sensitivity_l2=D, note=note, delta_release_bound=fail)  # fmt: skip
    return PrivacyReport(protocol=p.kind, cut_ratio=p.cut_ratio, t_c=cut.t_c, timesteps=cut.T, step=steps, view=view,
                         client_dp=_client_dp(cfg, dp_states, n_members, cut.t_c), cut_choice=cut_choice,
                         secrets_derived_from_seed=cfg.secrets.derive_from_seed,
                         unlinked=unlinked_privacy(cfg, image_shape, n_members, steps))  # fmt: skip


def unlinked_privacy(cfg: Config, image_shape, n_members: list[int], steps: int) -> UnlinkedPrivacy:
    """The view's epsilon for the unlinked server (:mod:`.unlinked`) of a run with ``n_members`` per
    client after ``steps`` rounds: per client the secret-sampling bound under replace-one, the largest
    over clients; add/remove infinite wherever a row can cross the cut."""
    delta = view_delta(cfg)
    why = refusal_for(cfg)
    if why is not None:
        return UnlinkedPrivacy(epsilon_replace_one=None, epsilon_add_remove=None, delta=delta, rounds=steps, reason=why)
    proto = protocol_for(cfg)
    cut, sampling = proto.cut, cfg.client_sampling
    clients, views = [], []
    for k, n in enumerate(n_members):
        v = view_unlinked(cut.abar_handover, cut.t_c, cut.T, image_shape, sampling=sampling,
                          batch_size=cfg.train.batch_size, n_members=n, rounds=steps, delta=delta,
                          sends_noise=proto.sends_noise)  # fmt: skip
        add_remove = INF if v.mu > 0 and v.p > 0 and v.chances > 0 else 0.0  # a row that can cross gives it away
        clients.append(UnlinkedClient(client=k, sample_rate=v.p, epsilon_replace_one=v.epsilon,
                                      epsilon_add_remove=add_remove, chances=v.chances))  # fmt: skip
        views.append(v)
    n_min = min(n_members)
    add_remove = max(c.epsilon_add_remove for c in clients)
    return UnlinkedPrivacy(epsilon_replace_one=max(c.epsilon_replace_one for c in clients), epsilon_add_remove=add_remove,
                           delta=delta, rounds=steps, mu_per_release=views[0].mu,
                           batch_rate=min(1.0, cfg.train.batch_size / n_min) if n_min else 0.0,
                           server_draw_probability=server_draw_probability(cut.t_c, cut.T),
                           sample_rate=max(c.sample_rate for c in clients), sampling=sampling,
                           chances=max(c.chances for c in clients),
                           add_remove_reason=ADD_REMOVE_REASON if add_remove == INF else None,
                           clients=clients)  # fmt: skip




def _aggregated_privacy(cfg: Config, image_shape, dp_states, n_members, steps, cut_choice) -> PrivacyReport:
    """``fedavg``: the view holds every client's uploaded model. Without DP-SGD no bound holds
    (epsilon infinite); with DP-SGD clients every upload is a post-processing of the client's
    DP-SGD run, so the view of its members is bounded by its DP-SGD epsilon (the largest over
    clients), under DP-SGD's adjacency. No GDP route: ``mu`` is None."""
    proto, delta = protocol_for(cfg), cfg.defense.client_dp.delta
    cut = proto.cut
    client_dp = _client_dp(cfg, dp_states, n_members, cut.t_c)
    uploads = -(-steps // cfg.train.local_steps) if steps else 0
    if cfg.defense.client_dp.enabled:
        eps = client_dp.epsilon
        note = (f"fedavg: {uploads} upload(s) of each client's model; with DP-SGD each is a post-processing of the "
                f"client's DP-SGD run, so the view is bounded by its epsilon (Opacus {cfg.defense.client_dp.accountant}, "
                "the largest over clients)")  # fmt: skip
    else:
        eps = INF if uploads else 0.0
        note = (f"fedavg: {uploads} upload(s) of each client's whole model and its member count; without DP-SGD "
                "nothing bounds what a trained model reveals of its images (epsilon infinite)")  # fmt: skip
    n_min = min(n_members)
    view = ViewPrivacy(mu=None, epsilon=eps, delta=delta, releases_per_image=uploads, fixed_noise=False,
                       per_release=ReleasePrivacy(None, eps), epochs=steps * cfg.train.batch_size / n_min if n_min else 0.0,
                       sensitivity_l2=sensitivity(image_shape), note=note, adjacency=DPSGD_ADJACENCY, threat=FEDAVG_THREAT)  # fmt: skip
    unlinked = UnlinkedPrivacy(epsilon_replace_one=None, epsilon_add_remove=None, delta=delta, rounds=steps,
                               reason="fedavg: every upload names its client; the unlinked bound is for rows that "
                                      "cross the cut")  # fmt: skip
    return PrivacyReport(protocol=cfg.protocol.kind, cut_ratio=cfg.protocol.cut_ratio, t_c=cut.t_c, timesteps=cut.T,
                         step=steps, view=view, client_dp=client_dp, cut_choice=cut_choice,
                         secrets_derived_from_seed=cfg.secrets.derive_from_seed, unlinked=unlinked)  # fmt: skip


def _client_dp(cfg: Config, dp_states, n_members, t_c) -> ClientDPReport:
    dp = cfg.defense.client_dp
    base = dict(enabled=dp.enabled, delta=dp.delta, max_grad_norm=dp.max_grad_norm if dp.enabled else None,
                accountant=dp.accountant if dp.enabled else None,
                grad_sample_mode=dp.grad_sample_mode if dp.enabled else None,
                target_epsilon=dp.target_epsilon if dp.enabled else None)  # fmt: skip
    if not dp.enabled:
        return ClientDPReport(**base, epsilon=INF, steps=0,
                              note="no DP-SGD: client models carry no formal guarantee if released")  # fmt: skip
    if t_c == 0 or dp_states is None:
        return ClientDPReport(**base, epsilon=0.0, noise_multiplier=dp.noise_multiplier, steps=0,
                              note="c = 0: client models are never trained")  # fmt: skip
    clients = []
    for k, (st, n) in enumerate(zip(dp_states, n_members)):
        hist = st["history"]
        clients.append(ClientDPEntry(client=k, epsilon=dp_sgd_epsilon(hist, dp.delta, dp.accountant),
                                     noise_multiplier=float(st["noise_multiplier"]),
                                     sample_rate=min(1.0, cfg.train.batch_size / n),
                                     steps=sum(int(h[2]) for h in hist)))  # fmt: skip
    return ClientDPReport(
        **base, epsilon=max(c.epsilon for c in clients), noise_multiplier=min(c.noise_multiplier for c in clients),
        sample_rate=max(c.sample_rate for c in clients), steps=max(c.steps for c in clients), clients=clients,
        note="epsilon: the largest over clients (Opacus accountant over the steps run, Poisson sampling)")  # fmt: skip


@locks_run
def privacy_report(run_dir: str | Path, recompute: bool = False) -> PrivacyReport:
    """``metrics/privacy.json`` of a trained run; recomputed from the config, the latest
    checkpoint and ``splits.json`` when missing (or ``recompute``), then written."""
    rd = RunDir(run_dir)
    cfg = rd.config()
    if not rd.meta_path.is_file():
        raise UserError(f"{rd.path} has no finished checkpoint to compute privacy from; train it first")
    step_dir, _ = verified_step_dir(rd, [STATE])
    meta = rd.meta()
    n_members = [len(m) for m in rd.splits().members]
    if not recompute and rd.metrics_path("privacy").is_file():
        try:
            cached = rd.metrics("privacy")
            u = cached.unlinked
            stale = u is not None and u.reason is None and u.sampling is None  # the sum-form number of before
            if cached.step == step_of(step_dir.name) and not stale:  # it describes the latest checkpoint
                return cached
        except UserError:
            pass  # damaged: recompute below
    state = TrainingState.from_dict(load_state(step_dir / STATE))
    dp_states = state.dp_states(len(n_members))
    cut_choice = None
    if cfg.protocol.target_epsilon is not None:
        cut_choice = CutChoice(target_epsilon=cfg.protocol.target_epsilon, cut_ratio=cfg.protocol.cut_ratio,
                               t_c=cfg.t_c, message="recomputed from the resolved config",
                               threat=cfg.protocol.target_threat)  # fmt: skip
    report = compute_privacy(cfg, meta.shape, release_counts=state.release_counts,
                             dp_states=dp_states or None, n_members=n_members, steps=state.step,
                             cut_choice=cut_choice)  # fmt: skip
    rd.write_metrics("privacy", report)
    return report


def format_privacy(report: PrivacyReport) -> str:
    """The epsilon table of a run (plain text)."""
    v, dp = report.view, report.client_dp
    f = lambda x, spec=".4g": fmt(x, spec, missing="-")  # noqa: E731
    lines = [
        f"server view: {report.protocol}, cut ratio c = {report.cut_ratio:g} (t_c = {report.t_c} of T = {report.timesteps})",
        f"  {'':24s} {'releases':>9s} {'mu':>11s} {'epsilon':>11s} {'delta':>9s}",
        f"  {'one release':24s} {1:>9d} {f(v.per_release.mu):>11s} {f(v.per_release.epsilon):>11s} {f(v.delta, 'g'):>9s}",
        f"  {'this run':24s} {v.releases_per_image:>9d} {f(v.mu):>11s} {f(v.epsilon):>11s} {f(v.delta, 'g'):>9s}",
        f"  fixed noise: {'yes' if v.fixed_noise else 'no'}; epochs run: {f(v.epochs, '.3g')}",
        f"  {v.note}",
        f"  adjacency: {v.adjacency}"
        + (f"; delta includes {v.delta_release_bound:g}, the chance that the release bound fails" if v.delta_release_bound else ""),
        f"  threat model: {v.threat}",
    ]
    u = report.unlinked
    if u is not None:
        lines.append(f"server view, unlinked (delta = {f(u.delta, 'g')}, {u.rounds} rounds):")
        if u.reason is not None:
            lines.append(f"  {u.reason}")
        else:
            how = ("rounds, rate q * P(t >= t_c) = " f"{f(u.batch_rate)} * {f(u.server_draw_probability)}"
                   if u.sampling == "poisson" else "batches an image can be in at most (shuffled epochs), each "
                   "crossing with P(t >= t_c)")  # fmt: skip
            lines.append(f"  epsilon replace-one {f(u.epsilon_replace_one)}, add/remove {f(u.epsilon_add_remove)}"
                         + (f" ({u.add_remove_reason})" if u.add_remove_reason else "")
                         + f"; per-release mu {f(u.mu_per_release)}, n = {u.chances} {how}: p = {f(u.sample_rate)} "
                         "(largest over clients)")  # fmt: skip
            lines.append(f"  {u.accountant}; adjacency: {u.adjacency}")
        lines.append(f"  threat model: {u.threat}")
    if report.cut_choice is not None:
        lines.append(f"  cut chosen by protocol.target_epsilon: {report.cut_choice.message}")
    if report.secrets_derived_from_seed:
        lines.append(f"  {SEED_SECRETS_WARNING}")
    if dp.enabled:
        lines.append(f"client DP-SGD ({dp.accountant}, delta = {f(dp.delta, 'g')}, max_grad_norm = "
                     f"{f(dp.max_grad_norm, 'g')}, grad_sample_mode = {dp.grad_sample_mode}):")  # fmt: skip
        lines.append(f"  {'client':>8s} {'epsilon':>10s} {'sigma':>8s} {'q':>8s} {'steps':>7s}")
        for c in dp.clients:
            lines.append(f"  {c.client:>8d} {f(c.epsilon):>10s} {f(c.noise_multiplier):>8s} {f(c.sample_rate):>8s} "
                         f"{c.steps:>7d}")  # fmt: skip
        lines.append(f"  {dp.note}")
        lines.append(f"  adjacency: {dp.adjacency} (not the view's replace-one: the two epsilons answer different questions)")
    else:
        lines.append(f"client DP-SGD: off ({dp.note})")
    return "\n".join(lines)
