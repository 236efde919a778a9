#!/usr/bin/env bash
# Session 41: would x Wqkv's backward survive FP8? bench/dev_qkv_grad_sim.py rounds its cotangent
# to e4m3 or e5m2 with one scale for the tensor (and reads w, h as e4m3); val loss on the bundled
# sample after 200 steps of the speedrun config, against the tree, SEEDS seeds each; the e4m3 runs
# also log max|cotangent| of every call (amax_e4m3.txt: 800 lines a seed, layers 3..0 per step).
# Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
TRAIN=bench/dev_qkv_grad_sim.py OUT=$OUT SEEDS="${SEEDS:-0 1}" STEPS=200 timeout "${LIMIT:-380}" \
  bash bench/dev_loss_ab.sh base= e4m3="QKV_GRAD_SIM=e4m3 QKV_GRAD_SIM_LOG=$OUT/amax_e4m3.txt" \
  e5m2="QKV_GRAD_SIM=e5m2" 2>&1 \
  | grep -E "val|rror|dev_qkv" | tee "$OUT/loss.txt"
