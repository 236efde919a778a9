#!/usr/bin/env bash
# Session 44, the short form of call1.sh for a nearly spent device budget: the tree against
# DH_SCALE='norm' only (two interleaved rounds), then the GPU test of 'norm' against 'output'.
# Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-2} PROFILE=0 VARIANTS="base dhnorm" timeout 170 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror" | tee "$OUT/variants.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 90 python3 -m pytest -q -m gpu tests/test_fp8_mlp.py -k "dh_scale" 2>&1 \
  | tail -3 | tee "$OUT/gpu_tests.txt"
