#!/usr/bin/env bash
# Forty-seventh session: the FP8 attention backward in one launch (bench/dev_bwd_one_launch.py) checked
# against the tree's two kernels and timed beside them; then, if the best variant beats the tree by
# more than 3 us a layer, the B128 step with it against the tree, interleaved.
# Run from the repo root with $OUT set and jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
timeout 200 python3 bench/dev_bwd_one_launch.py --rounds=3 --out="$OUT/bwd_one_launch.json" \
  2>/tmp/o_stderr.txt | tee "$OUT/one_launch.txt" | grep -E "check|medians"
tail -c 4000 /tmp/o_stderr.txt > "$OUT/one_launch_stderr_tail.txt"
best=$(python3 - "$OUT/bwd_one_launch.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["medians_us"]
m = m.get("bwd8", m)   # per part since the refactor after this session's call
best = min(m, key=m.get)
print(best if best != "tree" and m[best] < m["tree"] - 3 else "", end="")
PY
)
echo "best: '${best}'"
[ -n "$best" ] && OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-3} PROFILE=0 VARIANTS="base $best" timeout 360 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror|faster" | tee "$OUT/variants.txt"
cp /tmp/sv/*.json "$OUT/" 2>/dev/null
true
