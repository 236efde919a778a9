#!/usr/bin/env bash
# Dev (GPU): the B128 speedrun step under a few variants, interleaved twice in one session:
#   base  - the tree as it is
#   nogemm - XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (every dot to cuBLAS, none to XLA's Triton GEMMs)
#   cublaslt - XLA_FLAGS=--xla_gpu_enable_cublaslt=true (the bf16 dots through cuBLASLt too)
#   lane  - xent_kernel.LANE_STATS=True (the loss kernel's per-lane statistics; only in the tree of
#           commit 324a5f6, reverted for being slower: run this script in a checkout of it)
# preceded by the loss kernel's sweep (bench/dev_memory_kernels.py --only=xent; SWEEP=0 skips it)
# and followed by a profiled step of the tree (PROFILE=0 skips it).
#   OUT=dir VARIANTS="base nogemm lane" bash bench/dev_step_variants.sh
set -uo pipefail
OUT=${OUT:-/tmp/step_variants}; mkdir -p "$OUT"
VARIANTS=${VARIANTS:-base nogemm}
[ "${SWEEP:-1}" = 1 ] && timeout 150 python3 bench/dev_memory_kernels.py --only=xent --out="$OUT/xent_sweep.json" 2>&1 | grep -v Warn | tail -16
ARGS='"--cases=speedrun B128", "--backends=triton", "--warmup=3", "--steps=10", "--repeats=3"'
run() {  # variant, output
  local pre="" flags=""
  case $1 in
    nogemm) flags="--xla_gpu_enable_triton_gemm=false" ;;
    cublaslt) flags="--xla_gpu_enable_cublaslt=true" ;;
    lane) pre="import xent_kernel; xent_kernel.LANE_STATS = True; " ;;
  esac
  XLA_FLAGS=$flags python3 -c "import runpy, sys; sys.argv = ['bench/bench_train.py', $ARGS, '--out=$2']; ${pre}runpy.run_path('bench/bench_train.py', run_name='__main__')" 2>&1 | tail -1
}
for i in 1 2; do
  for v in $VARIANTS; do echo "$v $i"; run "$v" "$OUT/step_${v}_$i.json"; done
done
[ "${PROFILE:-1}" = 1 ] && python3 bench/bench_train.py "--cases=speedrun B128" --backends=triton --warmup=3 --steps=10 \
  --repeats=3 --profile=/tmp/trace_step --profile_top=40 --out="$OUT/step_profile.json" 2>&1 | tail -1
