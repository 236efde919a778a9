#!/usr/bin/env bash
# Dev (GPU): model.head_fp8 (the LM head's forward logits from an e4m3 dot) against the config
# without it, in one device call, most important first so a cut-off call still returns something:
#   1. the B128 speedrun step, base then head_fp8 (the latter profiled),
#   2. the GPU tests of the changed paths (the loss kernel with and without the scale, the fused
#      model paths that write the head's e4m3 input),
#   3. val loss after 200 steps on the bundled sample, seed 0 of each, then
#   4. the step again (base, head_fp8), then 5. seed 1 of each.
#   OUT=dir bash bench/dev_head_fp8.sh      (JSON and logs in $OUT; commands in the session's summary)
set -uo pipefail
OUT=${OUT:-/tmp/head_fp8}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
HEAD=--set=model.head_fp8=True
bt() { timeout 120 python3 bench/bench_train.py "--cases=speedrun B128" --backends=triton --warmup=5 --steps=20 \
         --repeats=3 "$@" 2>&1 | grep -E "^\| speedrun|Error|error:" | tail -3; }
loss() { OUT=$OUT SEEDS=$1 STEPS=200 timeout 150 bash bench/dev_loss_ab.sh base= head="--config.model.head_fp8=True" \
           2>&1 | grep -E "val|Error|error:" | tail -4; }
bt --out="$OUT/base_1.json"
bt "$HEAD" --profile=/tmp/head_prof --profile_top=40 --out="$OUT/head_1.json"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 150 python3 -m pytest -q -m gpu tests/test_xent_kernel.py \
  "tests/test_fp8_mlp.py::test_model_fused_path_matches_the_xla_path[True-True-True]" \
  "tests/test_fp8_mlp.py::test_model_fused_path_with_fp8_attention_matches_the_xla_path[True-True]" 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -6
loss 0
bt --out="$OUT/base_2.json"
bt "$HEAD" --out="$OUT/head_2.json"
loss 1
