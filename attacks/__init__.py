"""Attacks by an honest-but-curious server; each consumes a ServerView only (DESIGN.md §3)."""
