#!/usr/bin/env bash
# Forty-eighth session: would training survive the attention's q, k, v in e4m3? 200-step val loss on
# the bundled sample (bench/dev_attn_fp8_sim.py through bench/dev_loss_ab.sh), SEEDS seeds each: the
# tree's config with attn_fp8_dqkv off (the probe's path) against PARTS (default "row qkv"): 'row' =
# rotated q, k and v rounded per (token, head) row at a power-of-two scale (the kernels' numerics),
# 'qkv' = the projection's q, k, v rounded with one scale per part (the forty-seventh's probe).
# Run from the repo root with $OUT set and jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
off="--config.model.attn_fp8_dqkv=False"
runs=(base="$off")
for v in ${PARTS:-row qkv}; do runs+=("$v=ATTN_FP8_SIM=$v $off"); done
TRAIN=bench/dev_attn_fp8_sim.py OUT=$OUT SEEDS="${SEEDS:-0 1 2}" STEPS=200 timeout "${LIMIT:-540}" bash bench/dev_loss_ab.sh \
  "${runs[@]}" 2>&1 | grep -E "val|rror|dev_attn" | tee "$OUT/loss.txt"
cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/" 2>/dev/null || true
