#!/usr/bin/env bash
# Dev (GPU): the GPU tests of the kernels that fp8_mlp.py touches, a block sweep of its SwiGLU
# backward, then the B128 speedrun step with and without model.mlp_fp8, interleaved twice in one
# session, and a profiled FP8 step.
#   OUT=dir bash bench/dev_fp8_mlp_step.sh
set -uo pipefail
OUT=${OUT:-/tmp/fp8_step}; mkdir -p "$OUT"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 240 python3 -m pytest -q -m gpu tests/test_fp8_mlp.py \
  tests/test_norm_kernel.py tests/test_swiglu_kernel.py 2>&1 | tail -6 | tee "$OUT/gpu_tests.log"
timeout 120 python3 bench/dev_memory_kernels.py --only=swiglu,swiglu_fp8 --out="$OUT/swiglu_fp8_sweep.json" 2>&1 | tail -14
B=(python3 bench/bench_train.py "--cases=speedrun B128" --backends=triton --warmup=3 --steps=10 --repeats=3)
for i in 1 2; do
  "${B[@]}" --set=model.mlp_fp8=False --out="$OUT/base_$i.json" 2>&1 | tail -3
  "${B[@]}" --out="$OUT/fp8_$i.json" 2>&1 | tail -3   # the config's default since the eighth session
done
"${B[@]}" --profile=/tmp/trace_fp8 --profile_top=40 --out="$OUT/fp8_profile.json" 2>&1 | tail -45
