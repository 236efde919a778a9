#!/usr/bin/env bash
# Forty-eighth session, everything in one device call (machine starts were scarce): the e4m3-operand
# attention kernels alone, the loss probe (ATTN_FP8_SIM=row against
# base, a seed's pair at a time: SEEDS, default "0 1"; "" skips it), then the B128 step (STEP_ROUNDS rounds) only
# if the kernels beat the tree's and time is left. DEADLINE: seconds for the whole script (default 580).
# Run from the repo root with $OUT set and jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
t0=$(date +%s); left() { echo $(( ${DEADLINE:-580} - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
timeout "${KTIMEOUT:-150}" python3 bench/dev_attn_fp8_operands.py --rounds="${KROUNDS:-3}" --out="$OUT/kernels.json" 2>&1 | grep --line-buffered -v Warn > "$OUT/kernels.txt"
grep -E "^check|^medians|rope8|^round . rope" "$OUT/kernels.txt"
best=$(python3 - "$OUT/kernels.json" <<'PY'
import json, statistics, sys
try:
  r = json.load(open(sys.argv[1]))
  m = r["medians_us"]
  rope = {v: statistics.median(x["us"] for x in r["rope_rows"] if x["variant"] == v) for v in ("tree", "fp8ops")}
  v = min((u, k) for k, u in m["fwd"].items() if k.startswith("fp8"))[1]
  tree = rope["tree"] + m["fwd"]["tree"] + m["bwd8"]["tree"]
  ours = rope["fp8ops"] + m["fwd"][v] + m["bwd8"]["fp8ops"]
  print(f"{v if ours < tree - 5 else 'none'} tree {tree:.1f} fp8 {ours:.1f}", file=sys.stderr)
  print(v if ours < tree - 5 else "none")
except Exception as e:
  print("none"); print(e, file=sys.stderr)
PY
)
echo "step variant: $best (left $(left) s)"
off="--config.model.attn_fp8_dqkv=False"
for s in ${SEEDS-0 1}; do   # SEEDS="": no probe
  [ "$(left)" -gt 100 ] || break
  TRAIN=bench/dev_attn_fp8_sim.py OUT=$OUT SEEDS=$s STEPS=200 timeout "$(left)" bash bench/dev_loss_ab.sh \
    base="$off" row="ATTN_FP8_SIM=row $off" 2>&1 | grep -E "val|rror|dev_attn" | tee -a "$OUT/loss.txt"
done
cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/" 2>/dev/null || true
if [ "$best" != none ] && [ "$(left)" -gt 150 ]; then
  OUT=$OUT SWEEP=0 PROFILE=0 ROUNDS=${STEP_ROUNDS:-2} VARIANTS="base $best" timeout "$(left)" bash bench/dev_step_variants.sh 2>&1 | tee "$OUT/step.txt" | grep -E "ms a step|mean|paired|faster"
fi
echo "script took $(( $(date +%s) - t0 )) s"
