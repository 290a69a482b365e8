"""collafuse-privacy: CollaFuse split diffusion training (Allmendinger et al.,
arXiv 2406.14429) and what an honest-but-curious server learns from it."""

__version__ = "0.1.0"
