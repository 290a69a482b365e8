"""The ``collafuse-privacy`` command line: ``main`` and its commands, one module per group."""

from . import audit, flower, runs, sweep, train  # noqa: F401  (each adds its commands to main)
from .common import CliError, cap_message, main, os_error_line, set_threads, user_errors

__all__ = ["CliError", "cap_message", "main", "os_error_line", "set_threads", "user_errors"]

if __name__ == "__main__":  # pragma: no cover
    main()
