#!/usr/bin/env bash
# Fifty-third session's call 1: the parallel block's hand-off (fp8_mlp.PARALLEL_HANDOFF: the first norm
# writes layer 0's MLP copy, each norm's backward adds the next MLP's share of dh) and its unwritten h
# (PARALLEL_H_UNWRITTEN), timed interleaved against both off (nohandoff; hwritten, the unwritten h
# alone off, if VARIANTS names it), and W13's weight gradient on h's static copy
# (PARALLEL_W13_STATIC_H, off: its loss is unmeasured); the GPU tests of the parallel path and
# test_norm_kernel; then a profile of the tree with what time is left. Run from the repo root with
# $OUT set and jax-triton on PYTHONPATH; DEADLINE (default 570 s) bounds the call.
set -uo pipefail
t0=$(date +%s); left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
export PRE_nohandoff="import fp8_mlp; fp8_mlp.PARALLEL_HANDOFF = False"
export PRE_hwritten="import fp8_mlp; fp8_mlp.PARALLEL_H_UNWRITTEN = False"
export PRE_statich="import fp8_mlp; fp8_mlp.PARALLEL_W13_STATIC_H = True"
OUT=$OUT/steps SWEEP=0 ROUNDS=${ROUNDS:-2} VARIANTS="${VARIANTS:-base nohandoff statich}" PROFILE=0 \
  timeout $(( $(left) - ${RESERVE:-230} )) bash bench/dev_step_variants.sh 2>&1 | grep -v Warn | grep -E "ms a step|mean|faster|paired|round|^base|^no|^hw|^stat" | tail -20
echo "variants done at $(( $(date +%s) - t0 )) s"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout $(( $(left) - 75 )) python3 -m pytest -q -m gpu tests/test_fp8_mlp.py \
  tests/test_norm_kernel.py -k "parallel or dh_scale or norm" 2>&1 | tail -6
timeout $(( $(left) - 5 )) python3 bench/bench_train.py --warmup=3 --steps=10 --repeats=3 "--cases=speedrun B128" --backends=triton \
  --out="$OUT/prof.json" --profile=/tmp/prof --profile_top=30 2>&1 | grep -v Warn > "$OUT/prof.txt"
grep -E "ms/step" "$OUT/prof.txt"; grep -A34 "^profile:" "$OUT/prof.txt" | head -34
echo "profile done at $(( $(date +%s) - t0 )) s"
echo "script took $(( $(date +%s) - t0 )) s"
