#!/usr/bin/env bash
# Forty-seventh session: would training survive the attention's q, k, v in e4m3? 200-step val loss on
# the bundled sample (bench/dev_attn_fp8_sim.py through bench/dev_loss_ab.sh), SEEDS seeds each:
# the tree's config with attn_fp8_dqkv off (the probe's path) against q, k and v, or q and k only,
# rounded through e4m3 with one best-case scale per part (PARTS, default "qkv qk").
# Run from the repo root with $OUT set and jax-triton on PYTHONPATH (the device template's /tmp/site).
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
off="--config.model.attn_fp8_dqkv=False"
runs=(base="$off")
for v in ${PARTS:-qkv qk}; do runs+=("$v=ATTN_FP8_SIM=$v $off"); done
TRAIN=bench/dev_attn_fp8_sim.py OUT=$OUT SEEDS="${SEEDS:-0 1}" STEPS=200 timeout "${LIMIT:-520}" bash bench/dev_loss_ab.sh \
  "${runs[@]}" 2>&1 | grep -E "val|rror|dev_attn" | tee "$OUT/loss.txt"
