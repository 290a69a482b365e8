#!/usr/bin/env bash
# The GPU checks in one prepared script (issue 27): on a fresh machine holding the repository it
# installs (make's .venv), runs the CUDA-marked tests and the GPU-path tests, then the benchmarks,
# and prints the figures to quote. Budget: under 8 minutes on one GPU.
#
#     bash benchmarks/gpu_check.sh            # on the GPU machine (or here: the CPU parts)
#
# Without CUDA it says so in one line and runs the CPU parts of the same checks, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - t0 )) s)"; }

step "install"
make -s .venv/.installed >/dev/null
PY=.venv/bin/python
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEV=cuda
    $PY -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')"
else
    DEV=cpu
    echo "gpu_check: no CUDA device on this machine; running the CPU parts of the checks only"
fi

step "tests: CUDA-marked and the GPU path's CPU tests"
# -p no:cacheprovider: nothing written into the checkout; exit 5 (nothing collected) fails
$PY -m pytest -q -p no:cacheprovider -m "cuda or not slow" --durations=5 \
    tests/test_cuda.py tests/test_precision.py tests/test_batched_clients.py tests/test_batched_sampling.py \
    tests/test_deterministic.py tests/test_paper_preset.py

step "benchmark: precision (fp32 / bf16 / fp16 step time and peak memory)"
$PY benchmarks/bench_precision.py --device "$DEV"

step "benchmark: CollaFuse vs the same parties without the framework vs a plain DDPM loop"
if [ "$DEV" = cuda ]; then
    $PY benchmarks/bench_collafuse.py --device cuda --batch 64,256 --rounds 30 --repeats 3
else
    $PY benchmarks/bench_collafuse.py --batch 64 --rounds 10 --repeats 1
fi

step "benchmark: sampling, the clients one by one and batched, against a plain DDPM loop"
if [ "$DEV" = cuda ]; then
    $PY benchmarks/bench_sampling.py --device cuda --clients 5 --n 128 --preset small --image-size 32 --timesteps 250 --repeats 2
else
    OMP_NUM_THREADS=1 $PY benchmarks/bench_sampling.py --n 8 --repeats 1
fi

step "benchmark: DP-SGD step over a plain step"
if [ "$DEV" = cuda ]; then
    $PY benchmarks/bench_dp.py --device cuda --reps 20
else
    OMP_NUM_THREADS=1 $PY benchmarks/bench_dp.py --reps 5
fi

step "done"
