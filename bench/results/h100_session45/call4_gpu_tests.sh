#!/usr/bin/env bash
# Session 45, fourth and fifth calls (same machine): the rest of the GPU suite with DH_SCALE='norm' the
# default (call3's ran out of time after 40 tests, all passed).
set -uo pipefail
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 280 python3 -m pytest -q -m gpu tests/test_model.py tests/test_sample.py tests/test_adamw.py tests/test_norm_kernel.py 2>&1 | tail -6 | tee $OUT/gpu_tests2.txt
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 230 python3 -m pytest -q -m gpu tests/test_xent_kernel.py tests/test_attention_kernel.py tests/test_swiglu_kernel.py tests/test_fastmath_triton.py tests/test_triton_ffi.py 2>&1 | tail -6 | tee $OUT/gpu_tests3.txt
