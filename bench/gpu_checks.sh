#!/usr/bin/env bash
# Everything we run on the GPU machine in one go (device time is scarce): the training-throughput
# benchmark, the GPU tests, the decode benchmark, and the tokenizer/data benchmarks on that machine's
# CPU cores. Usage (repo root, on a machine with an NVIDIA GPU):
#   OUT=/tmp/out bash bench/gpu_checks.sh [bench_train.py flags, e.g. '--cases=speedrun B128']
# Knobs: GPU_TESTS (test files; default all GPU tests),
# CPU_BENCH=1 to also run the tokenizer and data-encoding benchmarks. Logs go to $OUT, JSON results to
# bench/results/ (and all of bench/results as $OUT/results.tgz).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then  # wheels carried to a machine without internet (jax-triton, ml_collections)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi -L; python3 -c "import jax, triton; print('jax', jax.__version__, 'triton', triton.__version__, jax.devices())"
timeout 170 python3 bench/bench_train.py "$@" 2>&1 | tee "$OUT/bench_train.log" | tail -16
# cuBLAS autotuning of the fp32 reference einsums only slows the tests down.
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 190 python3 -m pytest -q -m gpu ${GPU_TESTS:-tests} 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -8
timeout 90 python3 bench/bench_decode.py 2>&1 | tee "$OUT/bench_decode.log" | tail -22
if [ -n "${CPU_BENCH:-}" ]; then
  timeout 110 python3 bench/bench_tokenizer.py --size_mb 100 --tag h100host16 2>&1 | tee "$OUT/bench_tokenizer.log" | tail -10
  timeout 70 python3 bench/bench_data.py --mb=1000 --workers=16 --tag=h100host16 2>&1 | tee "$OUT/bench_data.log" | tail -6
fi
tar czf "$OUT/results.tgz" bench/results; ls "$OUT"
