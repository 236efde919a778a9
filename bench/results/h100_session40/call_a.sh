#!/usr/bin/env bash
# Session 40, call A: the attention kernels with two heads a program (attention_kernel.HEADS_PER_PROGRAM):
# their GPU tests (one and two heads, against the float32 reference), then the three kernels alone at
# the speedrun shape, interleaved (bench/dev_attn_ab.py), and the per-kernel pick for call B.
# It ran with the two heads' code in the tree (now bench/results/h100_session40/two_heads_a_program.patch:
# apply it first). Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 240 python3 -m pytest -q -m gpu tests/test_attention_kernel.py \
  -k "packed_rope or forward_and_gradients or future" 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
H2='HEADS_PER_PROGRAM=(2,2,2)'
SMALL='_FWD[32]=(32,32,4,3);_DQ[32]=(32,32,4,4);_DKDV[32]=(32,32,4,3)'
timeout 240 python3 bench/dev_attn_ab.py --rounds=3 --out="$OUT/attn_ab.json" \
  --variants "tree hp2:$H2 hp2s:$H2;$SMALL hp1s:$SMALL" 2>&1 | grep -v -i warn | tee "$OUT/attn_ab.txt"
