"""Collaborative sampling (DESIGN.md §1, inference; §5, one sampler).

The server draws ``x_{T-1} ~ N(0, I)`` and runs its steps ``t = T-1 .. t_c`` down to the
hand-over image ``h = x_{t_c-1}``, which it sends to the client; the client runs
``t = t_c-1 .. 0`` with its own model. Both step the one full-chain sampler (one variance
type, one clipping rule); the cut-image server's tail prediction is mapped to the full
chain's parameterisation, so the composed chain is the full chain at any cut. With ``c = 1``
the client draws its own noise and nothing crosses; with ``c = 0`` the server's output is
the final image.

    sampler.py    the step rule and the one loop (:class:`Sampler`)
    pipeline.py   :class:`CollaFusePipeline`: the server, the clients and the cut as one diffusers
                  pipeline; both halves of the loop, ``save_pretrained`` / ``from_pretrained``
    drivers.py    ``sample`` on a run, Flower's two halves, the export
    samples.py    what a ``sample`` writes and reads back: files, stats, manifest
"""

from .drivers import client_finish, export_pipeline, run_client_secrets, sample_run, server_handovers  # noqa: F401
from .pipeline import (CollaFusePipeline, CollaFusePipelineOutput, client_denoise, client_sample_generator,  # noqa: F401
                       load_models, server_sample_generator)  # fmt: skip
from .sampler import Sampler  # noqa: F401
from .samples import (MAX_BEYOND_SHARE, SampleStats, SamplesManifest, overshoot_tolerance, read_samples,  # noqa: F401
                      sample_stats, save_grid, write_handovers, write_samples)  # fmt: skip
