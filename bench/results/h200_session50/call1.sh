#!/usr/bin/env bash
# Fiftieth session, call 1: the forty-ninth's conftest fix on the GPU (test_triton_ffi's child process
# and test_sample's CLI runs beside the pytest process), xent_kernel.DX_FP8's GPU test, then the B128
# step with DX_FP8 (the head's dX as an e4m3 dot) against the tree, interleaved, and a profile of each.
# Run from the repo root with $OUT set and jax-triton on PYTHONPATH. DX_FP8 was removed after the session:
# `git apply bench/results/h200_session50/head_fp8_dx.patch` first (it also restores the GPU test it runs).
set -uo pipefail
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_xent_kernel.py tests/test_triton_ffi.py tests/test_sample.py 2>&1 | grep -v Warn > "$OUT/gpu_tests.txt"
tail -4 "$OUT/gpu_tests.txt"; echo "tests took $(( $(date +%s) - t0 )) s"
PRE_dx8="import xent_kernel; xent_kernel.DX_FP8 = True" OUT=$OUT/step SWEEP=0 ROUNDS=2 VARIANTS="base dx8" \
  PROFILE_VARIANTS="base dx8" timeout $(( ${DEADLINE:-570} - ($(date +%s) - t0) - 5 )) bash bench/dev_step_variants.sh 2>&1 | grep -v Warn
echo "script took $(( $(date +%s) - t0 )) s"
