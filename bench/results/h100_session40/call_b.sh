#!/usr/bin/env bash
# Session 40, call B: the B128 step with the attention kernels' best setting from call A's
# attn_ab.json (per kernel: heads a program and tile, bench/results/h100_session40/pick_attn.py),
# two heads a program at the tree's tiles (hp2), and the tree without the thirty-ninth session's
# embedding gradient in the first norm (noegrad), interleaved ROUNDS times. hpbest and hp2 need
# bench/results/h100_session40/two_heads_a_program.patch applied. As run (call B, after call A
# showed two heads a program slower): ROUNDS=4 VARIANTS="base noegrad" ATTN_AB=/dev/null.
set -uo pipefail
A=${ATTN_AB:-$OUT/attn_ab.json}
export PRE_hpbest="$(python3 bench/results/h100_session40/pick_attn.py "$A")"
echo "hpbest: $PRE_hpbest" | tee "$OUT/hpbest.txt"
export PRE_hp2="import attention_kernel as a; a.HEADS_PER_PROGRAM = (2, 2, 2)"
export PRE_noegrad="import norm_kernel; norm_kernel.EMBED_GRAD_IN_FIRST_NORM = False"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-3} PROFILE=0 VARIANTS="${VARIANTS:-base hpbest hp2 noegrad}" \
  timeout 570 bash bench/dev_step_variants.sh 2>&1 | grep -v -i warn | tee "$OUT/variants.txt"
cp /tmp/sv/*.json "$OUT/" 2>/dev/null
