"""Pairwise squared distances and nearest neighbours between image sets, in one place.

``|a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j`` as matrix products in float64 (the
cancellation for near-identical pairs stays at ~1e-12 relative), clamped at 0 against
round-off. :func:`nearest` walks the ``M x N`` matrix in blocks of at most ``block``
entries, so 5,000 candidates against 50,000 releases never materialise it.
"""

from __future__ import annotations

import math

import torch

BLOCK_ELEMS = 1 << 22  # entries of a distance block computed at once (32 MiB in float64)


def chunk_sizes(m: int, n: int, block: int = BLOCK_ELEMS) -> tuple[int, int]:
    """Rows and columns of a block of an ``m x n`` matrix with at most ``block`` entries."""
    cm = max(1, min(m, 1024))
    cn = max(1, min(n, block // cm))
    return cm, cn


def pairwise_sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances ``[n, m]`` float64 between the rows of ``a`` [n, ...] and ``b`` [m, ...]."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"shapes differ: {a.shape[1]} vs {b.shape[1]} values per row")
    return ((a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T).clamp_min(0)


@torch.no_grad()
def nearest(x: torch.Tensor, r: torch.Tensor, block: int = BLOCK_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``x`` [M, ...]: ``(min_j |x_i - r_j|_2, argmin_j)`` over the rows of ``r`` [N, ...].

    Float64 distances ``[M]`` and int64 indices ``[M]``; ``(inf, -1)`` when ``r`` is empty.
    """
    M, N = x.shape[0], r.shape[0]
    if N == 0:
        return torch.full((M,), math.inf, dtype=torch.float64), torch.full((M,), -1, dtype=torch.long)
    cm, cn = chunk_sizes(M, N, block)
    dist = torch.empty(M, dtype=torch.float64, device=x.device)
    idx = torch.empty(M, dtype=torch.long, device=x.device)
    for i in range(0, M, cm):
        best = arg = None
        for j in range(0, N, cn):
            d, k = pairwise_sqdist(x[i : i + cm], r[j : j + cn]).min(1)
            if best is None:
                best, arg = d, k
            else:
                better = d < best
                best, arg = torch.where(better, d, best), torch.where(better, k + j, arg)
        dist[i : i + cm], idx[i : i + cm] = best, arg
    return dist.sqrt(), idx
