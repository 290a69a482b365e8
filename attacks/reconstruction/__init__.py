"""Reconstruction attacks on the server view (one file per method; none yet)."""
