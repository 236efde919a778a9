#!/usr/bin/env bash
# Fifty-first session, call 1: Muon at the speedrun shape. (1) 200-step runs on the bundled sample,
# AdamW (the config) against Muon with bf16 Newton-Schulz at muon_lr_scale 2, 4, 8, seeds 0 and 1;
# (2) the B128 step, AdamW against Muon, interleaved. Run from the repo root with $OUT set and
# jax-triton on PYTHONPATH; DEADLINE (default 570 s) bounds the whole call.
set -uo pipefail
t0=$(date +%s); left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
M="--config.train.optimizer=muon --config.train.muon_ns_dtype=bfloat16"
OUT=$OUT/loss SEEDS="0 1" STEPS=200 timeout $(( $(left) - 200 )) bash bench/dev_loss_ab.sh base= \
  m2="$M --config.train.muon_lr_scale=2.0" m4="$M --config.train.muon_lr_scale=4.0" \
  m8="$M --config.train.muon_lr_scale=8.0" 2>&1 | grep -v Warn | tail -30
mkdir -p "$OUT/loss"; cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/loss/" 2>/dev/null
echo "loss runs took $(( $(date +%s) - t0 )) s"
run() { name=$1; shift; timeout $(( $(left) < 150 ? $(left) : 150 )) python3 bench/bench_train.py --warmup=3 --steps=10 --repeats=3 \
  "--cases=speedrun B128" --backends=triton --out="$OUT/$name.json" "$@" 2>&1 | grep -v Warn > "$OUT/$name.txt"; grep -E "ms/step" "$OUT/$name.txt" | sed "s/^/$name: /"; }
MS="--set=train.optimizer=muon --set=train.muon_ns_dtype=bfloat16"
run adamw1; run muon1 $MS; run adamw2; run muon2 $MS
echo "script took $(( $(date +%s) - t0 )) s"
