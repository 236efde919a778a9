#!/usr/bin/env bash
# Dev (GPU): model.mlp_fp8_w2 (act x W2 in e4m3, the fourth FP8 dot of the MLP) in one call: its
# GPU tests, the B128 speedrun step without and with it (interleaved twice), then the 200-step
# val-loss A/B on the bundled sample (bench/dev_loss_ab.sh; W2_SEEDS for the new path, seed 0 of
# the config's default beside it).
#   OUT=dir bash bench/dev_fp8_w2_step.sh
set -uo pipefail
OUT=${OUT:-/tmp/fp8_w2}; mkdir -p "$OUT"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 170 python3 -m pytest -q -m gpu tests/test_fp8_mlp.py -k "True" 2>&1 \
  | grep -v -i warn | tail -5 | tee "$OUT/gpu_tests.log"
B=(python3 bench/bench_train.py "--cases=speedrun B128" --backends=triton --warmup=3 --steps=10 --repeats=3)
for i in 1 2; do
  "${B[@]}" --out="$OUT/step_base_$i.json" 2>&1 | tail -1
  "${B[@]}" --set=model.mlp_fp8_w2=True --out="$OUT/step_w2_$i.json" 2>&1 | tail -1
done
for f in "$OUT"/step_*.json; do
  python3 -c "import json; r = json.load(open('$f'))['results'][0]; print('$f'.split('/')[-1], round(r['ms_per_step'], 3))"
done
OUT=$OUT SEEDS="${W2_SEEDS:-0 1}" timeout 200 bash bench/dev_loss_ab.sh w2="--config.model.mlp_fp8_w2=True" 2>&1 | tail -4
mv "$OUT/loss_ab.json" "$OUT/loss_ab_w2.json" 2>/dev/null
OUT=$OUT SEEDS=0 timeout 80 bash bench/dev_loss_ab.sh base= 2>&1 | tail -3
