"""Schema of ``metrics/burden.json``, written by ``eval/burden.py`` (``collafuse-privacy evaluate``):
the client's compute and traffic against training and sampling alone."""

from __future__ import annotations

from dataclasses import dataclass

from ..codec import SCHEMA, artefact


@artefact("burden")
@dataclass(frozen=True)
class BurdenReport:
    t_c: int
    timesteps: int
    sampling_client_flops_per_image: int
    sampling_server_flops_per_image: int
    sampling_local_only_flops_per_image: int
    sampling_flop_ratio: float  # client / local-only
    sampling_client_seconds_per_image: float
    sampling_local_only_seconds_per_image: float
    sampling_time_ratio: float
    training_client_share: float  # fraction of training images the client model trains on
    training_flops_per_image: int  # client, averaged over all its images
    training_local_only_flops_per_image: int
    training_flop_ratio: float
    training_seconds_per_image: float
    training_local_only_seconds_per_image: float
    training_time_ratio: float
    bytes_sent_per_training_image: float
    bytes_received_per_sample: int
    device: str = "cpu"
    schema: int = SCHEMA
