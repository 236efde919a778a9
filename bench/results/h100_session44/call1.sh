#!/usr/bin/env bash
# Session 44, first call: where attn_fp8_dqkv's dh gets its 2^-k, timed: the tree ('output', a
# multiply on the dot's output that runs as a pass of its own), 'operand' (d8's dequantization scale
# for cuBLASLt, the forty-third session's dhop) and 'norm' (the norm kernels apply it as they read
# dh); B128 steps interleaved; then the GPU tests of the attention kernels and the FP8 model paths
# (DH_SCALE='norm' against 'output' among them), then the dh GEMM in dhop's optimized HLO.
# Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-2} PROFILE=0 VARIANTS="base dhop dhnorm" timeout 250 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror" | tee "$OUT/variants.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout ${TEST_S:-150} python3 -m pytest -q -m gpu -x \
  tests/test_fp8_mlp.py tests/test_attention_kernel.py -k "dqkv or dh_scale or qkv_fp8 or fp8_attention" 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
XLA_FLAGS="--xla_dump_to=/tmp/dump_dhop --xla_dump_hlo_as_text" timeout 75 python3 -c "import runpy, sys; \
sys.argv = ['bench/bench_train.py', '--cases=speedrun B128', '--backends=triton', '--warmup=1', '--steps=2', '--repeats=1', \
'--out=/tmp/hlo_dhop.json']; import attention_kernel; attention_kernel.DH_SCALE = 'operand'; \
runpy.run_path('bench/bench_train.py', run_name='__main__')" > /dev/null 2>&1
f=$(ls -S /tmp/dump_dhop/*after_optimizations.txt | head -1)
b=$(grep -E "^ *%bitcast[.0-9]* = f8e5m2\[32768,1536\]" "$f" | sed -E 's/^ *%([^ ]*) =.*/\1/' | head -1)
grep -F "%$b" "$f" | grep -v "^ *%$b =" | sed -E 's/, metadata=.*"alpha_real":([^,]*).*/ alpha_real=\1/' | cut -c1-400 | tee "$OUT/dh_gemm_dhop.txt"
