#!/usr/bin/env bash
# Session 41, the end-to-end pipeline check on the GPU with today's tree: the one command on the
# bundled sample (its own dataset name, no copied files), 400 steps, as docs/SPEEDRUN_BENCHMARK.md
# "End to end on the GPU" lists, then the same command again (every stage but eval and the story
# skipped). Run from the repo root with $OUT set.
set -uo pipefail
cmd=(python3 speedrun.py --config=configs/tinystories_h100.py --config.data.dataset=tinystories_sample
     --config.data.dir=/tmp/sr_data --workdir=/tmp/sr --config.train.steps=400 --config.train.warmup_steps=40
     --config.train.eval_every=100 --config.train.log_every=100 --config.train.ckpt_every=400 --max_new_tokens=80)
echo "${cmd[*]}" | tee "$OUT/command.txt"
timeout 300 "${cmd[@]}" 2>&1 | grep -v -i "warn" | tail -40 | tee "$OUT/run1.txt"
cp /tmp/sr/speedrun.json "$OUT/speedrun_run1.json" 2>/dev/null
timeout 120 "${cmd[@]}" 2>&1 | grep -v -i "warn" | tail -14 | tee "$OUT/run2.txt"
cp /tmp/sr/speedrun.json "$OUT/speedrun_run2.json" 2>/dev/null
