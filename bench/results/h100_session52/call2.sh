#!/usr/bin/env bash
# Fifty-second session's prepared call 2 (not run in the 52nd): val loss at 200 steps on the bundled
# sample, the tree against parallel_block (both on the fused GPU path), seeds 0-2; then parallel at
# the tree's wall time if STEPS_EQ is given (200 x tree ms / parallel ms from call 1).
set -uo pipefail
t0=$(date +%s)
OUT=$OUT/loss SEEDS="${SEEDS:-0 1 2}" STEPS=200 timeout $(( ${DEADLINE:-570} - 20 )) bash bench/dev_loss_ab.sh \
  base= par="--config.model.parallel_block=True" 2>&1 | grep -v Warn | tail -10
if [ -n "${STEPS_EQ:-}" ]; then
  OUT=$OUT/loss_eq SEEDS="${SEEDS:-0 1 2}" STEPS=$STEPS_EQ timeout $(( ${DEADLINE:-570} - ($(date +%s) - t0) - 10 )) \
    bash bench/dev_loss_ab.sh par_eq="--config.model.parallel_block=True" 2>&1 | grep -v Warn | tail -5
fi
mkdir -p "$OUT/loss"; cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/loss/" 2>/dev/null
echo "script took $(( $(date +%s) - t0 )) s"
