#!/usr/bin/env bash
# Session 45, second call (same machine, right after call1): the weights' e4m3 copies bound on top of
# DH_SCALE='norm' ("both"), against 'norm' alone, two interleaved rounds, then a profiled step of
# 'norm'. Run from the repo root with $OUT set.
set -uo pipefail
export PRE_both="import attention_kernel; attention_kernel.DH_SCALE = 'norm'; import sys; sys.path.insert(0, 'bench'); import dev_weight_copies_bound as b; b.install()"
OUT=/tmp/sv2 SWEEP=0 ROUNDS=2 PROFILE=1 PROFILE_VARIANTS=dhnorm VARIANTS="dhnorm both" timeout 420 bash bench/dev_step_variants.sh 2>&1 | grep -v -i warn | grep -E "mean|ms a step|rror|faster" | tee $OUT/variants2.txt
cp /tmp/sv2/*.json $OUT/ 2>/dev/null
