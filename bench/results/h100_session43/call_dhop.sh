#!/usr/bin/env bash
# Session 43: attn_fp8_dqkv's dh with its 2^-k as d8's dequantization scale (DH_SCALE_AS_OPERAND,
# since the forty-fourth session attention_kernel.DH_SCALE = 'operand'),
# against the tree (a multiply on the dot's output, which ran as its own pass): the B128 step
# interleaved ROUNDS times, then the dh GEMM in the variant's optimized HLO.
# Run from the repo root with $OUT set.
set -uo pipefail
OUT=/tmp/sv3 SWEEP=0 ROUNDS=${ROUNDS:-2} PROFILE=0 VARIANTS="base dhop" timeout 160 bash bench/dev_step_variants.sh 2>&1 \
  | grep -v -i warn | grep -E "mean|ms a step|rror" | tee "$OUT/variants_dhop.txt"
XLA_FLAGS="--xla_dump_to=/tmp/dump_dhop --xla_dump_hlo_as_text" timeout 90 python3 -c "import runpy, sys; \
sys.argv = ['bench/bench_train.py', '--cases=speedrun B128', '--backends=triton', '--warmup=1', '--steps=2', '--repeats=1', \
'--out=/tmp/hlo_dhop.json']; import attention_kernel; attention_kernel.DH_SCALE = 'operand'; \
runpy.run_path('bench/bench_train.py', run_name='__main__')" > /dev/null 2>&1
f=$(ls -S /tmp/dump_dhop/*after_optimizations.txt | head -1)
b=$(grep -E "^ *%bitcast[.0-9]* = f8e5m2\[32768,1536\]" "$f" | sed -E 's/^ *%([^ ]*) =.*/\1/' | head -1)
grep -F "%$b" "$f" | grep -v "^ *%$b =" | sed -E 's/, metadata=.*"alpha_real":([^,]*).*/ alpha_real=\1/' | cut -c1-400 | tee "$OUT/dh_gemm_dhop.txt"
g=$(grep -F "%$b" "$f" | grep -F 'lt$matmul$f8' | head -1 | sed -E 's/^ *%([^ ]*) =.*/\1/')
for c in $(grep -E "^ *%$g = " "$f" | grep -oE "%constant_[0-9]+|%[a-z_]*fusion[.0-9]*" | sort -u); do grep -E "^ *$c = " "$f" | cut -c1-200; done
echo "readers of $g:"; grep -F "%$g#0" "$f" | cut -c1-300 | tee -a "$OUT/dh_gemm_dhop.txt"
