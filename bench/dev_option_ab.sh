#!/usr/bin/env bash
# Dev (GPU): one model option against the speedrun config without it, in one device call, most
# important first so a cut-off call still returns something:
#   1. the B128 speedrun step, base then the option (the latter profiled),
#   2. the GPU tests given after the option (the changed paths),
#   3. val loss after 200 steps on the bundled sample, seed 0 of each, then
#   4. the step again (base, option), then 5. seed 1 of each.
#   OUT=dir bash bench/dev_option_ab.sh model.KEY=VALUE [pytest test ids...]
# e.g. OUT=dir bash bench/dev_option_ab.sh model.mlp_fp8_wgrad_w2=True tests/test_swiglu_kernel.py
# (JSON and logs in $OUT; the commands that ran are in each session's bench/results summary). The
# twenty-second session's head_fp8 call ran this as bench/dev_head_fp8.sh (model.head_fp8=True).
set -uo pipefail
OPT=${1:?usage: bash bench/dev_option_ab.sh model.KEY=VALUE [pytest test ids...]}; shift
OUT=${OUT:-/tmp/option_ab}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
bt() { timeout 120 python3 bench/bench_train.py "--cases=speedrun B128" --backends=triton --warmup=5 --steps=20 \
         --repeats=3 "$@" 2>&1 | grep -E "^\| speedrun|Error|error:" | tail -3; }
loss() { OUT=$OUT SEEDS=$1 STEPS=200 timeout 150 bash bench/dev_loss_ab.sh base= new="--config.$OPT" \
           2>&1 | grep -E "val|Error|error:" | tail -4; }
bt --out="$OUT/base_1.json"
bt "--set=$OPT" --profile=/tmp/option_prof --profile_top=40 --out="$OUT/new_1.json"
if [ $# -gt 0 ]; then
  XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 150 python3 -m pytest -q -m gpu "$@" 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -6
fi
loss 0
bt --out="$OUT/base_2.json"
bt "--set=$OPT" --out="$OUT/new_2.json"
loss 1
