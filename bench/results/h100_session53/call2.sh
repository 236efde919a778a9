#!/usr/bin/env bash
# Fifty-third session's prepared call 2 (not run): val loss at 200 steps on the bundled sample, the
# parallel block's hand-off (fp8_mlp.PARALLEL_HANDOFF) against it with W13's weight gradient on h's
# static copy (PARALLEL_W13_STATIC_H; module switches, set through bench/dev_train_switches.py), seeds
# 0-2; the tree itself (no hand-off) as a third arm if ARMS3=1. Run from the repo root with $OUT set
# and jax-triton on PYTHONPATH; DEADLINE (default 570 s) bounds the call.
set -uo pipefail
t0=$(date +%s)
TRAIN=bench/dev_train_switches.py OUT=$OUT/loss SEEDS="${SEEDS:-0 1 2}" STEPS=200 timeout $(( ${DEADLINE:-570} - 20 )) \
  bash bench/dev_loss_ab.sh handoff="TRAIN_SWITCHES=fp8_mlp.PARALLEL_HANDOFF=True" \
  statich="TRAIN_SWITCHES=fp8_mlp.PARALLEL_HANDOFF=True,fp8_mlp.PARALLEL_W13_STATIC_H=True" ${ARMS3:+base=} 2>&1 | grep -v Warn | tail -8
mkdir -p "$OUT/loss"; cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/loss/" 2>/dev/null
echo "script took $(( $(date +%s) - t0 )) s"
