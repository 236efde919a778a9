#!/usr/bin/env bash
# Dev A/B (GPU): short runs of the speedrun config on the bundled TinyStories sample prepared as
# the tinystories dataset (10k BPE trained on it), val loss over the sample's whole val split.
# One run per NAME=OVERRIDES argument and seed; a summary JSON of every eval goes to $OUT.
#   OUT=dir SEEDS="0 1" STEPS=200 bash bench/dev_loss_ab.sh bf16="--config.model.mlp_fp8=False" fp8=
# An argument may start with ENV=VALUE words (exported for that run only): name="LM_X=0 --config...".
# TRAIN=script runs a drop-in for train.py that takes its flags (e.g. bench/dev_qkv_grad_sim.py).
set -euo pipefail
OUT=${OUT:-/tmp/loss_ab}; SEEDS=${SEEDS:-0 1}; STEPS=${STEPS:-200}; DATA=${DATA:-/tmp/ts_sample_10k}
TRAIN=${TRAIN:-train.py}
mkdir -p "$OUT" /tmp/loss_ab_runs
if [ ! -f "$DATA/meta.json" ]; then
  src=$(mktemp -d)
  cp assets/tinystories/train.txt "$src/TinyStoriesV2-GPT4-train.txt"
  cp assets/tinystories/valid.txt "$src/TinyStoriesV2-GPT4-valid.txt"
  python3 data.py --dataset=tinystories --local_dir="$src" --out_dir="$DATA" 2>&1 | tail -2
fi
for arg in "$@"; do
  name=${arg%%=*}; over=${arg#*=}
  envs=(); flags=()
  for w in $over; do if [[ $w == --* ]]; then flags+=("$w"); else envs+=("$w"); fi; done
  for s in $SEEDS; do
    wd=/tmp/loss_ab_runs/${name}_s$s; rm -rf "$wd"
    env "${envs[@]}" python3 "$TRAIN" --config=configs/tinystories_h100.py --config.data.dir="$DATA" \
      --config.train.eval_tokens=0 --config.train.steps="$STEPS" --config.train.warmup_steps=$((STEPS / 10)) \
      --config.train.eval_every=50 --config.train.log_every=50 --config.train.seed="$s" "${flags[@]}" \
      --workdir="$wd" 2>&1 | tail -2
    cp "$wd/metrics.jsonl" "/tmp/loss_ab_runs/metrics_${name}_s$s.jsonl"
    printf '%s' "$over" > "/tmp/loss_ab_runs/args_${name}_s$s.txt"   # what this run was, for the summary
  done
done
python3 - "$OUT/loss_ab.json" "$@" <<'PY'
import glob, json, os, sys
runs = {}
for f in sorted(glob.glob("/tmp/loss_ab_runs/metrics_*.jsonl")):
  ev = [json.loads(l) for l in open(f)]
  run = os.path.basename(f)[8:-6]
  args = f"/tmp/loss_ab_runs/args_{run}.txt"
  runs[run] = {
      "overrides": open(args).read() if os.path.exists(args) else None,
      "val_loss": {e["step"]: round(e["val_loss"], 4) for e in ev if e["event"] == "eval"},
      "train_loss": {e["step"]: round(e["loss"], 4) for e in ev if e["event"] == "train"}}
for k, v in runs.items():
  print(f"{k:24s} val {v['val_loss']}")
json.dump({"args_of_this_invocation": sys.argv[2:], "runs": runs}, open(sys.argv[1], "w"), indent=1)
PY
