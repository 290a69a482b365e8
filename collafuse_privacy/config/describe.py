"""``collafuse-privacy config``: the resolved config as commented YAML."""

from __future__ import annotations

import yaml

from .choices import CHOICES
from .identity import flatten
from .schema import Config


def _scalar(v) -> str:
    return yaml.safe_dump({"x": v}, default_flow_style=False).strip()[3:]


def describe(cfg: Config) -> str:
    """``cfg`` as YAML with every key; a comment gives the default where the value differs,
    and the allowed values where the key is a choice. Loads back to ``cfg``."""
    defaults = flatten(Config().to_dict())
    choices = CHOICES
    lines = ["# the resolved config: every key (--set KEY=VALUE overrides any of them)"]

    def walk(d: dict, depth: int, prefix: str) -> None:
        for k, v in d.items():
            key = prefix + k
            pad = "  " * depth
            if isinstance(v, dict):
                lines.append(f"{pad}{k}:")
                walk(v, depth + 1, key + ".")
                continue
            notes = []
            if defaults.get(key) != v:
                notes.append(f"default: {_scalar(defaults.get(key))}")
            if key in choices:
                notes.append("one of " + " | ".join(_scalar(c) for c in choices[key]))
            lines.append(f"{pad}{k}: {_scalar(v)}" + (f"  # {'; '.join(notes)}" if notes else ""))

    walk(cfg.to_dict(), 0, "")
    return "\n".join(lines)
