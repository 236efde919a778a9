#!/usr/bin/env bash
# Prepared in the forty-fifth session for the next one (not run): attention_kernel.ROPE_Q_IN_FWD,
# q rotated inside the attention forward and k alone by rope_k_kernel. First its GPU tests (the
# same bits as rope_qk_kernel + fwd_kernel, and the packed-RoPE entry against float32), then the
# kernels alone (rope + forward + backward, interleaved rounds), then the B128 step interleaved.
# Run from the repo root with $OUT set. Estimate: rope 47 -> ~24 us a layer, the forward a few us
# slower (one more tile store, 79 instead of 72 registers): ~0.05-0.08 ms a step at most.
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 150 python3 -m pytest -q -m gpu tests/test_attention_kernel.py \
  -k "q_rotated or packed_rope" 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
timeout 120 python3 bench/dev_attn_ab.py --variants "tree ropeq:ROPE_Q_IN_FWD=True" --rounds=3 \
  --out="$OUT/attn_ab.json" 2>&1 | grep -E "round|median|failed" | tee "$OUT/attn_ab.txt"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-3} PROFILE=0 VARIANTS="base ropeq" timeout 280 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror|faster" | tee "$OUT/variants.txt"
python3 bench/dev_paired.py /tmp/sv base ropeq | tee "$OUT/paired.txt"
cp /tmp/sv/*.json "$OUT/" 2>/dev/null
