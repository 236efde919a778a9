#!/usr/bin/env bash
# Forty-ninth session, call 2: the tree against the plain-JAX reference in one call, as issue 8 asks
# ("measured with bench/bench_train.py against the plain-JAX reference in the same run"), the tree
# at B256, then as much of the GPU test suite as the call's time leaves (DEADLINE, default 570 s).
# Plain JAX: cuDNN attention, XLA's loss, norms, SwiGLU and AdamW, an fp32 residual stream, no FP8,
# XLA's default command-buffer scheduling. Run from the repo root with $OUT set and jax-triton on PYTHONPATH.
set -uo pipefail
t0=$(date +%s); left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
PLAIN="--set=model.xent_backend=xla --set=model.norm_backend=xla --set=model.swiglu_backend=xla
 --set=model.residual_dtype=float32 --set=model.mlp_fp8=False --set=model.attn_fp8=False --set=model.head_fp8=False
 --set=model.attn_fp8_dqkv=False --set=model.mlp_fp8_w2=False --set=model.mlp_fp8_wgrad=False
 --set=model.mlp_fp8_wgrad_w2=False --set=model.mlp_fp8_h13=False --set=train.adamw_backend=xla
 --set=train.command_buffer_mode=lhs"
common="--warmup=3 --steps=10 --repeats=3"
run() { name=$1; shift; timeout 150 python3 bench/bench_train.py $common --out="$OUT/$name.json" "$@" 2>&1 \
  | grep -v Warn > "$OUT/$name.txt"; grep -E "ms/step" "$OUT/$name.txt" | sed "s/^/$name: /"; }
run tree1 "--cases=speedrun B128,speedrun B256" --backends=triton
run plain "--cases=speedrun B128" --backends=cudnn $PLAIN
run tree2 "--cases=speedrun B128" --backends=triton
echo "benchmarks took $(( $(date +%s) - t0 )) s; tests get $(( $(left) - 10 )) s"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout $(( $(left) - 10 )) python3 -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_model.py tests/test_train.py tests/test_xent_kernel.py tests/test_norm_kernel.py tests/test_swiglu_kernel.py \
  tests/test_adamw.py tests/test_sample.py tests/test_attention_kernel.py tests/test_fp8_mlp.py 2>&1 \
  | grep -v Warn > "$OUT/gpu_tests.txt"
tail -5 "$OUT/gpu_tests.txt"; grep -cE "PASSED|passed" "$OUT/gpu_tests.txt" >/dev/null
echo "script took $(( $(date +%s) - t0 )) s"
