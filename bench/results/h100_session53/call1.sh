#!/usr/bin/env bash
# Fifty-third session's prepared call 1 (not run: fifteen refused starts used the session's device
# time). The parallel block's hand-off (fp8_mlp.PARALLEL_HANDOFF, off in the tree until this call
# times it: the first norm writes layer 0's MLP copy, each norm's backward adds the next MLP's share
# of dh, and with PARALLEL_H_UNWRITTEN no bf16 h is written but the head's), timed interleaved
# against the tree: handoff; hwritten (the hand-off with h written, if VARIANTS names it); statich
# (the hand-off with W13's weight gradient on h's static copy, PARALLEL_W13_STATIC_H: its loss is
# call2.sh's). Then the GPU tests of the parallel path and test_norm_kernel, and a profile of the
# hand-off's step with what time is left. Run from the repo root with $OUT set and jax-triton on
# PYTHONPATH; DEADLINE (default 570 s) bounds the call, RESERVE (default 230 s) of it is kept for the
# tests and the profile.
set -uo pipefail
t0=$(date +%s); left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
H="import fp8_mlp; fp8_mlp.PARALLEL_HANDOFF = True"
export PRE_handoff="$H" PRE_hwritten="$H; fp8_mlp.PARALLEL_H_UNWRITTEN = False" PRE_statich="$H; fp8_mlp.PARALLEL_W13_STATIC_H = True"
OUT=$OUT/steps SWEEP=0 ROUNDS=${ROUNDS:-2} VARIANTS="${VARIANTS:-base handoff statich}" PROFILE=0 \
  timeout $(( $(left) - ${RESERVE:-230} )) bash bench/dev_step_variants.sh 2>&1 | grep -v Warn \
  | grep -E "ms a step|mean|faster|paired|round" | tail -20
for f in "$OUT"/steps/step_*.json; do   # the loss after the timed steps (random tokens): the same within FP8 noise
  python3 -c "import json; r = json.load(open('$f'))['results'][0]; print('$(basename "$f")', r['ms_per_step'], r['loss_after'])"
done
echo "variants done at $(( $(date +%s) - t0 )) s"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout $(( $(left) - 75 )) python3 -m pytest -q -m gpu tests/test_fp8_mlp.py \
  tests/test_norm_kernel.py -k "parallel or dh_scale or norm" 2>&1 | tail -6
timeout $(( $(left) - 5 )) python3 -c "import runpy, sys, fp8_mlp; fp8_mlp.PARALLEL_HANDOFF = True; sys.argv = ['bench/bench_train.py', \
  '--warmup=3', '--steps=10', '--repeats=3', '--cases=speedrun B128', '--backends=triton', '--out=$OUT/prof.json', \
  '--profile=/tmp/prof', '--profile_top=30']; runpy.run_path('bench/bench_train.py', run_name='__main__')" 2>&1 \
  | grep -v Warn > "$OUT/prof.txt"
grep -E "ms/step" "$OUT/prof.txt"; grep -A34 "^profile:" "$OUT/prof.txt" | head -34
echo "script took $(( $(date +%s) - t0 )) s"
