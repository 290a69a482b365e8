"""Regenerate the feature extractors that ship with the package (mnist5k at 16x16 and 28x28).

    python benchmarks/build_extractor.py            # writes eval/extractors/mnist5k-{16,28}.*
    python benchmarks/build_extractor.py --check    # retrains into a temporary folder, compares

Each is the offline classifier (eval/features.py) trained on the fixed split of all 5,000
mnist5k images by image id, on the CPU with one torch thread: the same bytes whatever the
machine's thread count, but not across CPU instruction sets (AVX2 / AVX-512 / AMX give other
bytes). ``--check`` says whether the rebuild is byte-identical, and fails only when it is not
and its test accuracy is more than 1.5 points from the shipped one. Prints the test accuracy,
training seconds, size and sha256.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from collafuse_privacy.eval.features import SHIPPED, build_shipped_extractor, shipped_files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="retrain into a temporary folder and compare with the shipped files")
    ap.add_argument("--size", type=int, action="append", help="image size(s) (default: every shipped size)")
    args = ap.parse_args()
    failed = 0
    for dataset, sizes in SHIPPED.items():
        for size in args.size or sizes:
            with tempfile.TemporaryDirectory() as tmp:
                meta = build_shipped_extractor(dataset, size, out_dir=tmp if args.check else None)
                built = Path(tmp if args.check else shipped_files(dataset, size)[0].parent) / f"{dataset}-{size}.safetensors"
                nbytes = built.stat().st_size
                same = ""
                if args.check:
                    shipped = json.loads(shipped_files(dataset, size)[1].read_text())
                    same = built.read_bytes() == shipped_files(dataset, size)[0].read_bytes()
                    close = abs(meta["test_accuracy"] - shipped["test_accuracy"]) <= 0.015
                    failed += not (same or close)
                    same = ("  identical to the shipped file" if same else
                            f"  other bytes than the shipped file (its accuracy {shipped['test_accuracy']:.2%}; "
                            f"{'within' if close else 'BEYOND'} 1.5 points: another CPU instruction set?)")
            print(f"{dataset} {size}x{size}: test accuracy {meta['test_accuracy']:.2%} on {meta['n_test']} images, "
                  f"trained in {meta['train_seconds']:.1f} s (1 thread), {nbytes} bytes, sha256 {meta['sha256']}{same}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
