#!/usr/bin/env bash
# Session 43, third machine: the GPU tests of train.py and speedrun.py with attn_fp8_dqkv on in the
# speedrun config, then what x Wqkv's FP8 dh GEMM does with its 2^-k (the optimized HLO: its scale
# operands' constants, its alpha, and what reads its output).
# Run from the repo root with $OUT set.
set -uo pipefail
XLA_FLAGS="--xla_dump_to=/tmp/dump_dqkv --xla_dump_hlo_as_text" timeout 90 python3 bench/bench_train.py \
  --cases="speedrun B128" --backends=triton --warmup=1 --steps=2 --repeats=1 --out=/tmp/hlo_step.json > /dev/null 2>&1
f=$(ls -S /tmp/dump_dqkv/*after_optimizations.txt | head -1)
for b in $(grep -E "^ *%bitcast[.0-9]* = f8e5m2\[32768,1536\]" "$f" | sed -E 's/^ *%([^ ]*) =.*/\1/' | head -1); do
  g=$(grep -F "%$b," "$f" | grep -F 'lt$matmul$f8' | head -1)
  echo "$g" | sed -E 's/, metadata=.*"alpha_real":([^,]*).*"beta":([^,]*).*/ alpha_real=\1 beta=\2/' | cut -c1-400
  gn=$(echo "$g" | sed -E 's/^ *%([^ ]*) =.*/\1/')
  for c in $(echo "$g" | grep -oE "%constant_[0-9]+" | sort -u); do grep -E "^ *$c = " "$f" | cut -c1-200; done
  echo "readers of $gn:"; grep -F "%$gn#0" "$f" | cut -c1-300
done | tee "$OUT/dh_gemm.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 330 python3 -m pytest -q -m gpu tests/test_train.py tests/test_speedrun.py 2>&1 \
  | tail -5 | tee "$OUT/gpu_tests_train.txt"
