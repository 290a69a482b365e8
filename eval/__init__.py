"""Evaluation: attacks scored against ground truth, image quality, the privacy audit, the report.

Everything here reads ground truth the server never sees (clean images, member lists);
attacks produce outputs, this package scores them (DESIGN.md §5, STYLE.md "What we take" 1).
Images are always ``[N, C, H, W]`` tensors with pixels in ``[-1, 1]``.

Layout, in the order a run is scored:

* ground truth: ``ground_truth`` (splits, images, the image id of every recorded row),
  ``canaries`` (an audit's inserted slots);
* the attack runners, on one skeleton (``harness``): ``membership`` (+ ``membership_report``),
  ``reconstruction`` (+ ``reconstruction_report``), ``audit`` (+ ``audit_score``, ``audit_stats``;
  ``audit_dpsgd`` for the white-box DP-SGD audit); their statistics in ``roc``, ``stats``,
  ``similarity``;
* quality: ``evaluate`` (the command), ``quality`` (FID / KID with intervals), ``features``
  (which extractor: ``extractor``, ``inception``, ``classifier``; shipped weights in
  ``extractors/``), ``burden`` (the clients' share of the work);
* ``report/``: collect the metrics files, analyse, tabulate, plot, render.
"""
