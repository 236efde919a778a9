#!/usr/bin/env bash
# Prepared in the forty-sixth session for the next one (not run): the attention kernels with TMA
# descriptors made on the device and Triton's warp specialization, through jax-triton with a global
# scratch buffer (bench/dev_tma_attention.py): forward, dQ and dK/dV, each checked against the tree's
# kernels on the same inputs and timed beside them.
# Run from the repo root with $OUT set, jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 bench/dev_tma_attention.py --compile_only 2>&1 | grep -v -i warn | tee "$OUT/compile.txt"
timeout 300 python3 bench/dev_tma_attention.py --rounds=3 --out="$OUT/tma_attention.json" 2>&1 \
  | grep -v -i warn | tail -40 | tee "$OUT/tma.txt"
