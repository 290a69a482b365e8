"""Attacks by an honest-but-curious server; each consumes a ServerView only (DESIGN.md §3).

Both families (``reconstruction``, ``membership``) share :mod:`.base`: one
``NotApplicable``, one registry-and-factory (``Family.make``), one way to pass options.
"""

from .base import Family, NotApplicable, parse_options  # noqa: F401
