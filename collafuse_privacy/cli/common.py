"""The CLI's shared parts: the ``main`` group, its options, and user errors as one line.

Thin click CLI over plain functions (which never import click): user errors are reported as one
line with exit code 2, never a traceback. Each command group is a module of this package
(``train``, ``flower``, ``runs``, ``audit``, ``sweep``) that adds its commands to ``main``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .. import protocol  # noqa: F401  (importing it adds the protocol's and the schedule's config checks)
from ..config import load_config
from ..errors import UserError

MAX_ERROR_CHARS = 1000  # an error echoes what the user gave; a huge value is cut, not printed whole


def cap_message(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(text).split("\n"))
    return text if len(text) <= limit else text[: limit - 40] + f" ... ({len(text) - limit + 40} characters cut)"


class CliError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {cap_message(self.format_message())}", err=True)


def os_error_line(exc: OSError) -> str:
    """``OSError`` as one line naming the path: permission denied, disk full, not a directory."""
    what = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p]
    return f"{what}: {' -> '.join(str(p) for p in paths)}" if paths else what


def user_errors(fn):
    """Turn UserError, an OS error (permissions, a full disk) and an interrupt into one line;
    keep tracebacks for real bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(os_error_line(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
            sys.exit(130)

    return wrapper


DEVICE = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="auto picks CUDA when present (default: the config's 'device').",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collafuse-privacy")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="torch threads of this command (default: the machine's cores; `sweep --jobs J` gives each "
                   "cell N // J). Set explicitly, so no command oversubscribes the CPU.")
def main(threads) -> None:
    """CollaFuse split diffusion, and what an honest-but-curious server learns."""
    set_threads(threads)


def set_threads(threads=None) -> int:
    """Set torch's intra-op threads (``threads``, at most the cores this process may use, else those
    cores); returns them. More threads than cores only oversubscribe (and 100000 exhaust memory)."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads is not None and int(threads) > cores:
        click.echo(f"note: --threads {threads} is more than the {cores} cores this process may use; using {cores}",
                   err=True)  # fmt: skip
        threads = cores
    if threads is None:
        threads = cores
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def load_cfg(config, overrides, device):
    """The config of ``--config`` / ``--set`` (and ``--device``)."""
    if device is not None:
        overrides = list(overrides) + [f"device={device}"]
    return load_config(config, overrides)


CONFIG = click.option("--config", "config", type=click.Path(), default=None,
                      help="YAML config (default: embedded configs/default.yaml).")
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help="Override a config key by dotted path, e.g. protocol.cut_ratio=0.3 "
                        "(`collafuse-privacy config` lists every key).")
RUN_OUT = click.option("--out", type=click.Path(), default=None,
                       help="Run directory (default: runs/<data>-<protocol>-c<ratio>-<hash>). Rerunning resumes.")


def embedded(name: str) -> Path:
    """A config shipped with the package (``collafuse_privacy/configs/``)."""
    from importlib import resources

    return Path(str(resources.files("collafuse_privacy.configs").joinpath(name)))
