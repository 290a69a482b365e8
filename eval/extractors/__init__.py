"""Feature-extractor weights shipped with the package (data only).

``<dataset>-<size>.safetensors``: the offline classifier's weights for that data set and
image size; ``<dataset>-<size>.json`` beside it: their sha256 (the extractor's identity in
``metrics/quality.json`` and the report), test accuracy, split and spec. Regenerate them
bit for bit with ``python benchmarks/build_extractor.py``
(:func:`collafuse_privacy.eval.features.build_shipped_extractor`).
"""
