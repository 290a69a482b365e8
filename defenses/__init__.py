"""Defences: DP-SGD clients, release accounting, fixed noise (DESIGN.md §4)."""
