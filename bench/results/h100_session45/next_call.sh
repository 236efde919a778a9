#!/usr/bin/env bash
# Prepared in the forty-fifth session for the next one (not run): the B128 step with
# attention_kernel.ROPE_Q_IN_FWD (q rotated inside the attention forward, k alone by rope_k_kernel;
# on since the forty-fifth session on the strength of the kernels alone, -8.3 us a layer) against
# noropeq (rope_qk_kernel + fwd_kernel), interleaved; then the kernels alone again.
# Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-3} PROFILE=0 VARIANTS="base noropeq" timeout 330 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror|faster" | tee "$OUT/variants.txt"
python3 bench/dev_paired.py /tmp/sv base noropeq | tee "$OUT/paired.txt"
cp /tmp/sv/*.json "$OUT/" 2>/dev/null
timeout 90 python3 bench/dev_attn_ab.py --variants "tree noropeq:ROPE_Q_IN_FWD=False" --rounds=3 \
  --out="$OUT/attn_ab.json" 2>&1 | grep -E "median|failed" | tee "$OUT/attn_ab.txt"
