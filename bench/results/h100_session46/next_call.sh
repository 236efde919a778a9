#!/usr/bin/env bash
# Prepared in the forty-sixth session for the next one (not run): the attention kernels with TMA
# descriptors made on the device and Triton's warp specialization, through jax-triton with a global
# scratch buffer (bench/dev_tma_attention.py): forward, dQ and dK/dV, each checked against the tree's
# kernels on the same inputs and timed beside them; then, if the checks passed, the B128 step with
# them (install_step, the `tmaws` variant) against the tree, interleaved. ~9 minutes in all.
# Run from the repo root with $OUT set, jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
# stderr apart: a warp-specialization compile that fails (and is retried) dumps its MLIR there.
timeout 200 python3 bench/dev_tma_attention.py --rounds=3 --out="$OUT/tma_attention.json" 2>/tmp/tma_stderr.txt \
  | tee "$OUT/tma.txt" | tail -45
tail -c 6000 /tmp/tma_stderr.txt > "$OUT/tma_stderr_tail.txt"
grep -q "check bwd8 tma_ws .* ok" "$OUT/tma.txt" && grep -q "check fwd tma_ws .* ok" "$OUT/tma.txt" && \
  OUT=/tmp/sv SWEEP=0 ROUNDS=2 PROFILE=0 VARIANTS="base tmaws" timeout 340 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror|faster" | tee "$OUT/variants.txt"
cp /tmp/sv/*.json "$OUT/" 2>/dev/null
