#!/usr/bin/env bash
# Session 45, first call: the B128 step, interleaved: the tree; attn_fp8_dqkv's dh 2^-k as cuBLASLt's
# operand scale (dhop) or in the norm kernels (dhnorm); and a bound, the step with every weight's
# e4m3 copies made before it (wconst, bench/dev_weight_copies_bound.py). Then the GPU tests of
# DH_SCALE and the FP8 attention paths. Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
export PRE_wconst="import sys; sys.path.insert(0, 'bench'); import dev_weight_copies_bound as b; b.install()"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-2} PROFILE=0 VARIANTS="${VARIANTS:-base dhnorm wconst dhop}" timeout ${VAR_S:-330} \
  bash bench/dev_step_variants.sh 2>&1 | grep -v -i warn | grep -E "mean|ms a step|rror|faster" | tee "$OUT/variants.txt"
python3 bench/dev_paired.py /tmp/sv ${VARIANTS:-base dhnorm wconst dhop} | tee "$OUT/paired.txt"
cp /tmp/sv/*.json "$OUT/" 2>/dev/null
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout ${TEST_S:-150} python3 -m pytest -q -m gpu -x \
  tests/test_fp8_mlp.py tests/test_attention_kernel.py -k "dh_scale or dqkv or qkv_fp8 or fp8_attention" 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
