"""Typed, frozen run configuration.

A config is a tree of frozen dataclasses (:mod:`.schema`). It is loaded from YAML with
``yaml.safe_load``, overridden with dotted ``key=value`` pairs (values parsed as YAML scalars, so
``protocol.cut_ratio=0.3`` is a float; :mod:`.load`), and validated on load (:mod:`.validate`):
unknown keys, wrong types and out-of-range values raise :class:`UserError` naming the key. The
resolved config is saved into every run directory; its identity hash names it (:mod:`.identity`).

The package imports only the utilities below it; the allowed values of its choice keys are the
names the registries above it are declared with (:mod:`.choices`).
"""

from .choices import (CHOICES, CLIP_RULES, CONDITIONING_NAMES, DATASET_NAMES, PARTITION_NAMES,  # noqa: F401
                      PRESET_NAMES, PROTOCOL_NAMES, RANGES, SCHEDULE_NAMES)
from .describe import describe  # noqa: F401
from .identity import LATE_KEYS, MUTABLE_KEYS, config_hash, flatten, identity  # noqa: F401
from .load import (MAX_CONFIG_BYTES, apply_overrides, default_config_text, dump_yaml, from_dict,  # noqa: F401
                   load_config, parse_override, read_yaml, with_overrides)
from ..options import StrictLoader, strict_yaml  # noqa: F401
from .schema import (ClientDPConfig, Config, DataConfig, DefenseConfig, DiffusionConfig, ModelConfig,  # noqa: F401
                     ProtocolConfig, RecordConfig, SampleConfig, SecretsConfig, TrainConfig, cut_timestep)
from .validate import add_check, validate  # noqa: F401
