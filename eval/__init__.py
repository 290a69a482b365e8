"""Evaluation: image quality (FID/KID), image similarity, and the paper's disclosure figures.

Everything here reads ground truth the server never sees (clean images, member lists);
attacks produce outputs, this package scores them (DESIGN.md §5, STYLE.md "What we take" 1).
Images are always ``[N, C, H, W]`` tensors with pixels in ``[-1, 1]``.
"""
