#!/usr/bin/env bash
# Session 42: model.attn_fp8_dqkv (x Wqkv's backward dots in FP8 on e5m2 dQKV from the attention's
# backward kernels): its GPU tests, the B128 step against the tree interleaved ROUNDS times, then
# 200-step val loss on the bundled sample (SEEDS seeds each), and with PROFILE=1 a profiled step's
# top kernels.
# Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 150 python3 -m pytest -q -x -m gpu tests/test_attention_kernel.py \
  tests/test_fp8_mlp.py -k "qkv_fp8 or dqkv or packed_rope or fp8_attention_matches" 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-2} PROFILE=0 VARIANTS="base dqkv8" \
  timeout 200 bash bench/dev_step_variants.sh 2>&1 | grep -v -i warn | tee "$OUT/variants.txt"
OUT=$OUT SEEDS="${SEEDS:-0 1}" STEPS=200 timeout "${LIMIT:-200}" bash bench/dev_loss_ab.sh base= \
  dqkv8="--config.model.attn_fp8_dqkv=True" 2>&1 | grep -E "val|rror" | tee "$OUT/loss.txt"
[ "${PROFILE:-0}" = 1 ] || exit 0
timeout 80 python3 bench/bench_train.py --cases="speedrun B128" --backends=triton --warmup=3 --steps=10 --repeats=2 \
  --set=model.attn_fp8_dqkv=True --profile=/tmp/trace --profile_top=25 --out="$OUT/step_profile_dqkv8.json" 2>&1 \
  | grep -v -i warn | tail -30 | cut -c1-150
[ "${HLO:-0}" = 1 ] || exit 0
# Whether cuBLASLt applies dh's constant 2^-k as its alpha (no pass over dh) and which FP8 dots run:
# the optimized HLO's FP8 GEMM calls on e5m2 operands, with their output types and alpha.
XLA_FLAGS="--xla_dump_to=/tmp/dump_dqkv --xla_dump_hlo_as_text" timeout 80 python3 bench/bench_train.py \
  --cases="speedrun B128" --backends=triton --warmup=1 --steps=2 --repeats=1 --set=model.attn_fp8_dqkv=True \
  --out=/tmp/hlo_step.json > /dev/null 2>&1
f=$(ls -S /tmp/dump_dqkv/*after_optimizations.txt | head -1)
grep -E "f8e5m2" "$f" | grep -E "custom-call|cublas" | sed -E 's/backend_config=.*"alpha_real":([^,]*).*/alpha_real=\1/' \
  | cut -c1-260 | head -12 | tee "$OUT/hlo_f8e5m2_gemms.txt"
