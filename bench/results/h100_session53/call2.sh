#!/usr/bin/env bash
# Fifty-third session's call 2: val loss at 200 steps on the bundled sample, the tree against W13's
# weight gradient on h's static copy (fp8_mlp.PARALLEL_W13_STATIC_H, a module switch: set through
# bench/dev_train_switches.py), seeds 0-2. Run from the repo root with $OUT set and jax-triton on
# PYTHONPATH; DEADLINE (default 570 s) bounds the call.
set -uo pipefail
t0=$(date +%s)
TRAIN=bench/dev_train_switches.py OUT=$OUT/loss SEEDS="${SEEDS:-0 1 2}" STEPS=200 timeout $(( ${DEADLINE:-570} - 20 )) \
  bash bench/dev_loss_ab.sh base= statich="TRAIN_SWITCHES=fp8_mlp.PARALLEL_W13_STATIC_H=True" 2>&1 | grep -v Warn | tail -8
mkdir -p "$OUT/loss"; cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/loss/" 2>/dev/null
echo "script took $(( $(date +%s) - t0 )) s"
