#!/usr/bin/env bash
# Fiftieth session, call 2: the head-backward FP8 loss probe (bench/dev_head_fp8_sim.py): 200 steps on
# the bundled sample, 2 seeds an arm: the tree, DX_FP8's real kernel path, and the simulated dW-only and
# both-dots (the twenty-fourth session's numerics) arms. Run from the repo root with $OUT set; the kernel arm
# needs `git apply bench/results/h200_session50/head_fp8_dx.patch` (DX_FP8 was removed after the session).
set -uo pipefail
t0=$(date +%s)
TRAIN=bench/dev_head_fp8_sim.py OUT=$OUT/loss SEEDS="0 1" STEPS=200 timeout $(( ${DEADLINE:-570} - 10 )) \
  bash bench/dev_loss_ab.sh base= kernel="HEAD_FP8_SIM=kernel" both="HEAD_FP8_SIM=both" dw="HEAD_FP8_SIM=dw" 2>&1 \
  | grep -v Warn | tail -40
mkdir -p "$OUT/loss"; cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/loss/" 2>/dev/null
echo "script took $(( $(date +%s) - t0 )) s"
