#!/usr/bin/env bash
# Session 39, call 1 (H100): GPU tests of the first norm's scatter backward, then the B128 step
# under four variants interleaved three times, then a profiled step of eall with an HLO dump
# whose tail is named (bench/dev_hlo_fusion.py --tail_us). Run from the repo root with $OUT set.
# It ran on ea5876f + this session's change with norm_kernel.EMBED_GRAD_IN_FIRST_NORM still off by
# default; on the session's commit it is on, so `base` there is `egrad` (add VARIANTS="noegrad ..."
# with PRE_noegrad="import norm_kernel; norm_kernel.EMBED_GRAD_IN_FIRST_NORM = False" for the old tree).
set -uo pipefail
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 240 python3 -m pytest -q -m gpu tests/test_norm_kernel.py \
  -k "lookup or scatters or either_norm" 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
export PRE_alldep="import fp8_mlp; fp8_mlp.WEIGHTS_AFTER_FIRST_NORM = 'all'"
export PRE_egrad="import norm_kernel; norm_kernel.EMBED_GRAD_IN_FIRST_NORM = True"
export PRE_eall="$PRE_alldep; $PRE_egrad; norm_kernel.EMBED_IN_FIRST_NORM = True"
# pstart (a bound, not a product change): the batch's window starts read from a constant table
# (1024 steps of random starts, indexed by step % 1024) instead of the threefry chain at the step's start.
export PRE_pstart="import numpy as np, jax.numpy as jnp, train; train.window_starts = lambda k, s, b, n, t: jnp.asarray(np.random.default_rng(0).integers(0, n - t, (1024, b), dtype=np.int32))[s % 1024]"
OUT=/tmp/sv SWEEP=0 ROUNDS=${ROUNDS:-3} PROFILE=0 VARIANTS="${VARIANTS:-base egrad alldep eall}" \
  bash bench/dev_step_variants.sh 2>&1 | grep -v -i warn | tee "$OUT/variants.txt"
python3 - <<'EOF' | tee "$OUT/timings.json"
import glob, json, re
out = {}
for f in sorted(glob.glob("/tmp/sv/step_*_[0-9].json")):
  v, i = re.match(r".*/step_(\w+)_(\d)\.json", f).groups()
  r = json.load(open(f))["results"][0]
  out.setdefault(v, []).append([round(r["ms_per_step"], 3), round(r["loss_after"], 5)])
print(json.dumps(out))
EOF
P=${PROFILE_V-eall}
[ -z "$P" ] && exit 0
eval "PRE=\$PRE_$P"
XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text" python3 -c "import runpy, sys; sys.argv = ['bench/bench_train.py', '--cases=speedrun B128', '--backends=triton', '--warmup=3', '--steps=10', '--repeats=3', '--profile=/tmp/trace', '--profile_top=40', '--out=$OUT/step_profile_$P.json']; $PRE; runpy.run_path('bench/bench_train.py', run_name='__main__')" 2>&1 | tail -1
python3 bench/dev_hlo_fusion.py /tmp/dump --timeline="$OUT/step_profile_$P.json" --tail_us=700 > "$OUT/tail_$P.txt" 2>&1
python3 bench/dev_hlo_fusion.py /tmp/dump --timeline="$OUT/step_profile_$P.json" --after_gemm_us=20 > "$OUT/head_$P.txt" 2>&1
cut -c1-200 "$OUT/tail_$P.txt" | tail -45
