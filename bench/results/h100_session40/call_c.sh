#!/usr/bin/env bash
# Session 40, call C (prepared; the session got no machine for it): x Wqkv's cotangent handed over
# divided by s (fp8_mlp.QKV_GRAD_OVER_S, off in the tree): the attn_fp8 GPU tests (with it off and on), the
# B128 step with it (`overs` in bench/dev_step_variants.sh) against the tree interleaved ROUNDS times, then a profiled step of
# it with an HLO dump whose last 700 us are named (bench/dev_hlo_fusion.py --tail_us).
# Run from the repo root with $OUT set.
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 150 python3 -m pytest -q -m gpu tests/test_fp8_mlp.py \
  -k "fp8_attention" 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-4} PROFILE=0 VARIANTS="${VARIANTS:-base overs}" \
  timeout 330 bash bench/dev_step_variants.sh 2>&1 | grep -v -i warn | tee "$OUT/variants.txt"
cp /tmp/sv/step_*.json "$OUT/" 2>/dev/null
[ "${PROFILE_TAIL:-1}" = 1 ] || exit 0
XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text" timeout 100 python3 -c "import runpy, sys; \
sys.argv = ['bench/bench_train.py', '--cases=speedrun B128', '--backends=triton', '--warmup=3', '--steps=10', \
'--repeats=3', '--profile=/tmp/trace', '--profile_top=40', '--out=$OUT/step_profile_overs.json']; import fp8_mlp; fp8_mlp.QKV_GRAD_OVER_S = True; \
runpy.run_path('bench/bench_train.py', run_name='__main__')" 2>&1 | tail -1
python3 bench/dev_hlo_fusion.py /tmp/dump --timeline="$OUT/step_profile_overs.json" --tail_us=700 > "$OUT/tail_overs.txt" 2>&1
cut -c1-160 "$OUT/tail_overs.txt" | head -30
