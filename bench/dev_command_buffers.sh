#!/usr/bin/env bash
# Dev check (GPU): the speedrun step with the Triton kernels lowered to jaxlib's typed-FFI launcher
# (triton_ffi.py, the default) against jax-triton's legacy custom call (LM_TRITON_FFI=0), interleaved
# on one machine, then a profile of the FFI step (which kernels sit in command buffers) and the
# kernel GPU tests. Usage: OUT=dir bash bench/dev_command_buffers.sh
set -u
OUT=${OUT:-/tmp/cb}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L
step() { tag=$1; shift; echo "== $tag LM_TRITON_FFI=${LM_TRITON_FFI:-1}"
  timeout 150 python3 bench/bench_train.py "--cases=speedrun B128" --backends=triton --warmup=3 --steps=10 \
    --repeats=3 --out="$OUT/$tag.json" "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^W0000" | tail -3; }
step ffi_a
LM_TRITON_FFI=0 step legacy_a
step ffi_b
LM_TRITON_FFI=0 step legacy_b
step ffi_profile --profile=/tmp/trace --profile_top=45
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 240 python3 -m pytest -q -m gpu tests/test_triton_ffi.py \
  tests/test_norm_kernel.py tests/test_xent_kernel.py tests/test_swiglu_kernel.py tests/test_attention_kernel.py \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -6
