#!/usr/bin/env bash
# Session 43, second call: model.attn_fp8_dqkv's profiled B128 step (top kernels) and the optimized
# HLO's FP8 GEMMs on e5m2 operands (does cuBLASLt take dh's constant 2^-k as its alpha?).
# Run from the repo root with $OUT set.
set -uo pipefail
timeout 90 python3 bench/bench_train.py --cases="speedrun B128" --backends=triton --warmup=3 --steps=10 --repeats=2 \
  --set=model.attn_fp8_dqkv=True --profile=/tmp/trace --profile_top=25 --out="$OUT/step_profile_dqkv8.json" 2>&1 \
  | grep -v -i warn | tail -30 | cut -c1-150
XLA_FLAGS="--xla_dump_to=/tmp/dump_dqkv --xla_dump_hlo_as_text" timeout 90 python3 bench/bench_train.py \
  --cases="speedrun B128" --backends=triton --warmup=1 --steps=2 --repeats=1 --set=model.attn_fp8_dqkv=True \
  --out=/tmp/hlo_step.json > /dev/null 2>&1
f=$(ls -S /tmp/dump_dqkv/*after_optimizations.txt | head -1)
grep -E "f8e5m2" "$f" | grep -E "custom-call|cublas" | sed -E 's/backend_config=.*"alpha_real":([^,]*).*/alpha_real=\1/' \
  | cut -c1-260 | head -12 | tee "$OUT/hlo_f8e5m2_gemms.txt"
