"""The schemas of a run's JSON files, one module per producer (each module's docstring names it):

    train           checkpoints/latest.json, the rows of metrics/train.jsonl (training)
    view            server_view/{meta,record,manifest}.json (training, view.py)
    privacy         metrics/privacy.json (defenses/privacy.py; CutChoice: resolve.py)
    quality         metrics/quality.json (eval/evaluate.py)
    burden          metrics/burden.json (eval/burden.py)
    membership      metrics/membership.json (eval/membership.py)
    reconstruction  metrics/reconstruction.json (eval/reconstruction.py)
    audit           metrics/audit.json (eval/audit.py)
    sweep           <cell>/cell.json, OUT/sweep.json (orchestration/cells.py, orchestration/sweep.py)

Importing this package registers every one of them in :data:`collafuse_privacy.run.codec.ARTEFACTS`.
"""

from __future__ import annotations

from .train import LatestCheckpoint, TrainRow
from .view import RecordStats, ViewManifest, ViewMeta
from .privacy import (ClientDPEntry, ClientDPReport, CutChoice, DPSGD_ADJACENCY, LINKED_THREAT, PrivacyReport,
    ReleasePrivacy, UNLINKED_THREAT, UnlinkedClient, UnlinkedPrivacy, VIEW_ADJACENCY, ViewPrivacy)
from .quality import (ClientDisclosure, ClientQuality, DisclosureFigures, PooledQuality, QUALITY_FORMAT,
    QualityFloor, QualityReport, QualityRun)
from .burden import BurdenReport
from .membership import BestMethod, GDPSection, MembershipMethod, MembershipReport, MembershipResult
from .reconstruction import BestReconstruction, Linking, ReconstructionMethod, ReconstructionReport
from .sweep import CellStatus, IndexCell, SweepIndex
from .audit import (AUDIT_FORMAT, AuditBound, AuditMethod, AuditOneRun, AuditReleases, AuditReport, AuditStratum,
                    AuditUnlinked)

__all__ = [
    "CellStatus", "IndexCell", "SweepIndex",
    "LatestCheckpoint", "TrainRow", "RecordStats", "ViewManifest", "ViewMeta", "ClientDPEntry", "ClientDPReport",
    "CutChoice", "DPSGD_ADJACENCY", "LINKED_THREAT", "PrivacyReport", "ReleasePrivacy", "UNLINKED_THREAT",
    "UnlinkedClient", "UnlinkedPrivacy", "VIEW_ADJACENCY", "ViewPrivacy", "ClientDisclosure", "ClientQuality",
    "DisclosureFigures", "PooledQuality", "QUALITY_FORMAT", "QualityFloor", "QualityReport", "QualityRun",
    "BurdenReport", "BestMethod", "GDPSection", "MembershipMethod", "MembershipReport", "MembershipResult",
    "BestReconstruction", "Linking", "ReconstructionMethod", "ReconstructionReport", "AUDIT_FORMAT", "AuditBound",
    "AuditMethod", "AuditOneRun", "AuditReleases", "AuditReport", "AuditStratum", "AuditUnlinked",
]
