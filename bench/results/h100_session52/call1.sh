#!/usr/bin/env bash
# Fifty-second session, call 1: the parallel block (model.parallel_block). (1) 200-step runs on the
# bundled sample, sequential against parallel, both on the XLA norms (the fused norms have no
# parallel form yet), seeds 0-2; (2) the B128 step of the same two, interleaved. Run from the repo
# root with $OUT set and jax-triton on PYTHONPATH; DEADLINE (default 570 s) bounds the whole call.
set -uo pipefail
t0=$(date +%s); left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
X="--config.model.norm_backend=xla"
OUT=$OUT/loss SEEDS="${SEEDS:-0 1 2}" STEPS=200 timeout $(( $(left) - 230 )) bash bench/dev_loss_ab.sh \
  seq="$X" par="$X --config.model.parallel_block=True" 2>&1 | grep -v Warn | tail -12
mkdir -p "$OUT/loss"; cp /tmp/loss_ab_runs/metrics_*.jsonl "$OUT/loss/" 2>/dev/null
echo "loss runs took $(( $(date +%s) - t0 )) s"
run() { name=$1; shift; timeout $(( $(left) < 150 ? $(left) : 150 )) python3 bench/bench_train.py --warmup=3 --steps=10 --repeats=3 \
  "--cases=speedrun B128" --backends=triton --out="$OUT/$name.json" "$@" 2>&1 | grep -v Warn > "$OUT/$name.txt"; grep -E "ms/step" "$OUT/$name.txt" | sed "s/^/$name: /"; }
S="--set=model.norm_backend=xla"
run xseq1 $S; run xpar1 $S --set=model.parallel_block=True; run xseq2 $S; run xpar2 $S --set=model.parallel_block=True
echo "script took $(( $(date +%s) - t0 )) s"
