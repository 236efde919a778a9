#!/usr/bin/env bash
# Forty-eighth session: the attention on e4m3 q, k, v rows (bench/dev_attn_fp8_operands.py) against the
# tree's kernels: checked and timed alone (3 interleaved rounds), then the B128 step with the fastest
# forward variant against the tree (bench/dev_step_variants.sh, 3 interleaved rounds).
# Run from the repo root with $OUT set and jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 200 python3 bench/dev_attn_fp8_operands.py --rounds=3 --out="$OUT/kernels.json" 2>&1 | grep -v Warn | tee "$OUT/kernels.txt" | tail -40
best=$(python3 - "$OUT/kernels.json" <<'PY'
import json, sys
try:
  m = json.load(open(sys.argv[1]))["medians_us"]["fwd"]
  print(min((v, k) for k, v in m.items() if k.startswith("fp8") and k != "fp8qk")[1])
except Exception:
  print("fp8ops")
PY
)
echo "step variant: $best"
OUT=$OUT SWEEP=0 PROFILE=0 ROUNDS=${ROUNDS:-3} VARIANTS="base $best" timeout "${STEP_LIMIT:-330}" bash bench/dev_step_variants.sh 2>&1 | tee "$OUT/step.txt"
