"""The allowed values of the config's choice keys and the ranges of its numeric keys.

The names of what a registry holds (protocols, server conditionings, data sets, partitions,
schedules) are declared here, in the config's own layer, because the config may not import the
modules that hold the registries (they import the config). Each of those registries is built
with ``names=`` one of these tuples and refuses a name not declared here; a test checks that
every declared name is registered (``tests/test_conditioning.py``). :data:`CHOICES` is derived
from them.
"""

from __future__ import annotations

PROTOCOL_NAMES = ("shared-noise", "cut-image", "fedavg")  # collafuse_privacy.protocol.PROTOCOLS
CONDITIONING_NAMES = ("none", "client", "labels")  # collafuse_privacy.protocol.CONDITIONINGS
DATASET_NAMES = ("mnist5k", "digits", "cifar10", "image-folder")  # collafuse_privacy.data.DATASETS
PARTITION_NAMES = ("iid", "by-class", "dirichlet")  # collafuse_privacy.data.PARTITIONS
SCHEDULE_NAMES = ("linear", "cosine")  # collafuse_privacy.diffusion.SCHEDULES
PRESET_NAMES = ("micro", "tiny", "small", "base")  # collafuse_privacy.models.PRESETS
# The clipping rules of the one sampler (collafuse_privacy/sampling/sampler.py).
CLIP_RULES = ("none", "x0", "low-noise")

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "data.name": DATASET_NAMES,
    "data.partition": PARTITION_NAMES,
    "diffusion.schedule": SCHEDULE_NAMES,
    "model.preset": PRESET_NAMES,
    "model.client_preset": (None, *PRESET_NAMES),
    "model.server_conditioning": CONDITIONING_NAMES,
    "record.dtype": ("float16", "float32"),
    "defense.client_dp.accountant": ("prv", "rdp"),
    "defense.client_dp.grad_sample_mode": ("hooks", "functorch"),
    "sample.clip": CLIP_RULES,
    "train.sampling": ("shuffle", "poisson"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.batched_clients": (None, True, False),
    "sample.batched_clients": (None, True, False),
    "protocol.target_threat": ("linked", "unlinked"),
    "protocol.kind": PROTOCOL_NAMES,
}

# (key, low, high, low inclusive, high inclusive)
RANGES = [
    ("seed", 0, 2**63 - 1, True, True),  # the largest seed torch and numpy both take
    ("protocol.cut_ratio", 0.0, 1.0, True, True),
    # membership attacks and FID compare members with held-out images: a run needs some
    ("data.holdout_fraction", 0.0, 1.0, False, False),
    ("data.public_fraction", 0.0, 1.0, True, False),
    ("data.dirichlet_alpha", 0.0, None, False, False),
    ("data.image_size", 4, 1024, True, True),
    ("data.clients", 1, None, True, False),
    ("diffusion.timesteps", 2, 100_000, True, True),
    ("diffusion.beta_start", 0.0, 1.0, False, False),
    ("diffusion.beta_end", 0.0, 1.0, False, False),
    ("train.steps", 0, None, True, False),
    ("train.local_steps", 1, None, True, False),
    ("train.batch_size", 1, None, True, False),
    ("train.lr", 0.0, None, False, False),
    ("train.lr_warmup", 0, None, True, False),
    ("train.grad_clip", 0.0, None, False, False),
    ("train.checkpoint_every", 1, None, True, False),
    ("train.keep_checkpoints", 1, None, True, False),
    ("record.max_items", 0, None, True, False),
    ("record.shard_size", 1, None, True, False),
    ("sample.n", 1, None, True, False),
    ("sample.batch_size", 1, None, True, False),
    ("data.max_images", 1, None, True, False),
    ("data.channels", 1, 3, True, True),
    ("defense.client_dp.max_grad_norm", 0.0, None, False, False),
    ("defense.client_dp.delta", 0.0, 1.0, False, False),
    ("defense.client_dp.noise_multiplier", 0.0, None, True, False),
    ("defense.client_dp.target_epsilon", 0.0, None, False, False),
    ("defense.client_dp.log_every", 1, None, True, False),
    ("protocol.target_epsilon", 0.0, None, True, False),
    ("protocol.target_delta", 0.0, 1.0, False, False),
]

