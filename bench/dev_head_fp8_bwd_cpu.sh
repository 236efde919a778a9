#!/usr/bin/env bash
# Dev A/B on the CPU (no GPU needed): does model.head_fp8_bwd (the head's backward dots on FP8 copies of
# U = softmax - onehot) cost val loss? The tiny config (d128, 4 layers, the 10k vocabulary, fp32 compute,
# the bundled sample) with head_fp8 on, 800 steps, val loss over the whole sample val split, three arms:
#   fp32: head_fp8 alone (the backward dots in the compute dtype, fp32 here)
#   fp8:  head_fp8_bwd (e4m3(U x 448) for dh, e5m2(U x 2^15) for dW)
#   flush (a positive control): head_fp8_bwd with dW's copy at e5m2(U x 0.5), which flushes p < 2^-15
#         (~3e-5) as the fourteenth session's e5m2 gradient did
#   OUT=dir SEEDS="0 1" STEPS=800 ARMS="fp32 fp8 flush" bash bench/dev_head_fp8_bwd_cpu.sh
# Two runs at a time (2 cores: ~0.5 s a step alone, ~1 s side by side); metrics.jsonl per run in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/head_fp8_bwd_cpu}; SEEDS=${SEEDS:-0 1}; STEPS=${STEPS:-800}; ARMS=${ARMS:-fp32 fp8 flush}
mkdir -p "$OUT"
run() {  # arm seed
  local args=(--config=configs/tiny.py --config.model.head_fp8=True --config.train.steps="$STEPS"
              --config.train.eval_every=200 --config.train.eval_tokens=0 --config.train.log_every=200
              --config.train.seed="$2" --workdir="$OUT/$1_s$2")
  rm -rf "$OUT/$1_s$2"
  case $1 in
    fp32) python3 train.py "${args[@]}" ;;
    fp8) python3 train.py "${args[@]}" --config.model.head_fp8_bwd=True ;;
    flush) python3 -c "import runpy, sys; sys.path.insert(0, '.'); import fp8_mlp; fp8_mlp.HEAD_DW_SCALE = 0.5; \
sys.argv = ['train.py'] + sys.argv[1:]; runpy.run_path('train.py', run_name='__main__')" \
         "${args[@]}" --config.model.head_fp8_bwd=True ;;
  esac > "$OUT/$1_s$2.log" 2>&1
  grep -E "val loss" "$OUT/$1_s$2.log" | tail -1 | sed "s/^/$1 seed $2: /"
}
jobs=()
for s in $SEEDS; do for a in $ARMS; do jobs+=("$a $s"); done; done
for ((i = 0; i < ${#jobs[@]}; i += 2)); do
  run ${jobs[i]} &
  if ((i + 1 < ${#jobs[@]})); then run ${jobs[i + 1]} & fi
  wait
done
