#!/usr/bin/env bash
# Fifty-second session's prepared call 1 (not run in the 52nd: no machine was lent): the parallel
# block (model.parallel_block) on the fused path (fp8_mlp.parallel_sublayer). (1) its GPU tests;
# (2) the B128 step, the tree against parallel_block, interleaved, one profile each. Run from the
# repo root with $OUT set and jax-triton on PYTHONPATH; DEADLINE (default 570 s) bounds the call.
set -uo pipefail
t0=$(date +%s); left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -m gpu tests/test_fp8_mlp.py -k parallel 2>&1 | tail -4
run() { name=$1; shift; timeout $(( $(left) < 150 ? $(left) : 150 )) python3 bench/bench_train.py --warmup=3 --steps=10 --repeats=3 \
  "--cases=speedrun B128" --backends=triton --out="$OUT/$name.json" "$@" 2>&1 | grep -v Warn > "$OUT/$name.txt"; grep -E "ms/step" "$OUT/$name.txt" | sed "s/^/$name: /"; }
P="--set=model.parallel_block=True"
run tree1; run par1 $P; run tree2; run par2 $P
run par_prof $P --profile="$OUT/prof_par"
grep -A30 "Where the device time" "$OUT/par_prof.txt" | head -30
echo "script took $(( $(date +%s) - t0 )) s"
