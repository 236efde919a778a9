#!/usr/bin/env bash
# Session 45, third call: DH_SCALE='norm' now the default. The end-to-end pipeline on the bundled
# sample (one run of session 41's command, 400 steps: its val loss and steady tokens/s against the
# forty-third session's 3.0508 at step 200 / 3.2357 at 400 and ~4.08M), then the GPU tests of the
# modules the change touches. Run from the repo root with $OUT set.
set -uo pipefail
mkdir -p "$OUT/e2e"
cmd=(python3 speedrun.py --config=configs/tinystories_h100.py --config.data.dataset=tinystories_sample
     --config.data.dir=/tmp/sr_data --workdir=/tmp/sr --config.train.steps=400 --config.train.warmup_steps=40
     --config.train.eval_every=100 --config.train.log_every=100 --config.train.ckpt_every=400 --max_new_tokens=80)
echo "${cmd[*]}" > "$OUT/e2e/command.txt"
timeout 150 "${cmd[@]}" 2>&1 | grep -v -i "warn" | tail -30 | tee "$OUT/e2e/run1.txt"
cp /tmp/sr/speedrun.json "$OUT/e2e/speedrun_run1.json" 2>/dev/null
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout ${TEST_S:-330} python3 -m pytest -q -m gpu tests/test_fp8_mlp.py \
  tests/test_norm_kernel.py tests/test_model.py tests/test_adamw.py tests/test_xent_kernel.py tests/test_sample.py 2>&1 \
  | tail -6 | tee "$OUT/gpu_tests.txt"
