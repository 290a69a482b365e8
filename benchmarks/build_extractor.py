"""Regenerate the feature extractors that ship with the package (mnist5k at 16x16 and 28x28).

    python benchmarks/build_extractor.py            # writes eval/extractors/mnist5k-{16,28}.*
    python benchmarks/build_extractor.py --check    # retrains into a temporary folder, compares bytes

Each is the offline classifier (eval/features.py) trained on the fixed split of all 5,000
mnist5k images by image id, on the CPU with one torch thread: the same bytes whatever the
machine's thread count. Prints the test accuracy, training seconds, size and sha256.
"""

from __future__ import annotations

import argparse
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
                    same = built.read_bytes() == shipped_files(dataset, size)[0].read_bytes()
                    failed += not same
                    same = "  identical to the shipped file" if same else "  DIFFERS from the shipped file"
            print(f"{dataset} {size}x{size}: test accuracy {meta['test_accuracy']:.2%} on {meta['n_test']} images, "
                  f"trained in {meta['train_seconds']:.1f} s (1 thread), {nbytes} bytes, sha256 {meta['sha256']}{same}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
