"""User-facing errors.

Everything the user can get wrong (a config key, a path, a corrupt file) raises
:class:`UserError`; the CLI turns it into one line and exit code 2. Library code
never imports click.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line (exit code 2)."""
