#!/usr/bin/env bash
# Forty-seventh session: the persistent attention kernels (bench/dev_persistent_attention.py) checked
# against the tree's and timed beside them; then, if the best ptr variant's forward + FP8 backward
# beats the tree's, the B128 step with it against the tree, interleaved (bench/dev_step_variants.sh).
# Run from the repo root with $OUT set and jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 bench/dev_persistent_attention.py --variants=${PV:-ptrh,ptrhc,ptrhc2} --rounds=3 --out="$OUT/persistent_attention.json" \
  2>/tmp/p_stderr.txt | tee "$OUT/persistent.txt" | grep -E "check|medians"
tail -c 4000 /tmp/p_stderr.txt > "$OUT/persistent_stderr_tail.txt"
best=$(python3 - "$OUT/persistent_attention.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["medians_us"]
both = {n: m["fwd"][n] + m["bwd8"][n] for n in m["bwd8"] if n in m["fwd"]}
best = min(both, key=both.get)
print(best if best != "tree" and both[best] < both["tree"] - 2 else "", end="")
print(f"fwd+bwd8 us: {both}", file=sys.stderr)
PY
)
echo "best: '${best}'"
[ -n "$best" ] && OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-3} PROFILE=0 VARIANTS="base $best" timeout 330 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror|faster" | tee "$OUT/variants.txt"
cp /tmp/sv/*.json "$OUT/" 2>/dev/null
true
