#!/usr/bin/env bash
# Dev (GPU): the B128 speedrun step under a few variants, interleaved twice in one session:
#   base  - the tree as it is
#   nogemm - XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (every dot to cuBLAS, none to XLA's Triton GEMMs)
#   cublaslt - XLA_FLAGS=--xla_gpu_enable_cublaslt=true (the bf16 dots through cuBLASLt too)
#   exhaustive - XLA_FLAGS=--xla_gpu_exhaustive_tiling_search=true (the autotuner tries every tile
#           config for the dots XLA gives its own Triton GEMMs, the e4m3 ones among them)
#   concurrent - --set=train.command_buffer_mode=concurrent (the step's command buffer as a graph of
#           its data dependencies, so independent kernels may run at once; XLA's default is lhs)
#   lhsbuf - --set=train.command_buffer_mode=lhs (the command buffer in XLA's one scheduled order, as
#           before the twenty-sixth session)
#   nopad - xent_kernel.VOCAB_ALIGN=1 (the LM head's matmuls at the real 10,000 columns, as before
#           the tenth session's padding to 10,112)
#   attn8 - --set=model.attn_fp8=True (the attention's x Wqkv in e4m3)
#   wgrad - --set=model.mlp_fp8_wgrad=True (the MLP's W13 gradient in e4m3; only in the tree of
#           commit bea5ab3, removed for being slower: run this script in a checkout of it)
#   perlayer - fp8_mlp.STACKED_WEIGHTS=False (each layer quantizes its own MLP weights, as before the
#           eleventh session, instead of all layers in one go before the loop)
#   attn8perlayer - attn8 with STACKED_WEIGHTS=False (Wqkv's e4m3 copy per layer, as in the tenth session)
#   percast - model.STACKED_CASTS=False (each layer casts its own matrices to bf16 instead of all
#           layers in one go; only in the tree of commit 9a682d8, removed for no gain)
#   streams - streams.STREAM=1 (the weight gradients as async calls on XLA's stream 1; only in the
#           tree of commit fda6025, removed for no gain: run this script in a checkout of it)
#   streamsconc - streams and concurrent together (ditto)
#   lhs   - XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true (the scheduler that moves an async
#           op's done as late as its users allow, so the work between start and done can overlap it)
#   streamslhs - streams and lhs together (ditto)
#   hwrite - fp8_mlp.NORM_IN_WGRAD=False (the MLP's norm writes its bf16 h for W13's e4m3 weight
#           gradient, as before the twenty-third session, instead of that gradient remaking h)
#   xent4k - xent_kernel.BLOCK_V=4096 (the loss kernel's block before the twenty-seventh session, the
#           H200's best; the twenty-seventh ran the reverse, "xent8k" = 8192, on the tree of ec2f6b8)
#   roperot - attention_kernel.FUSED_ROPE_FWD=True (q and k rotated inside the attention forward,
#           fwd_rope_kernel; removed in the twenty-eighth session for no gain: apply
#           bench/results/h100_session28/fwd_rope_kernel.patch to ff90161's parent first)
#   wtrans - fp8_mlp.WEIGHT_TRANSPOSE='triton' (the e4m3 weights' transposed layouts by one Triton pass
#           a layer from the fp32 weight; removed in the twenty-ninth session for being slower:
#           `git apply bench/results/h100_session29/weight_transpose_triton.patch` puts it back)
#   dxnat - xent_kernel.DX_WEIGHT_T=False (the head's dX dot as autodiff writes it, on w itself,
#           as before the twenty-ninth session; the session ran the reverse, "headT" = True, on
#           880251e; bench/dev_head_layouts.py times the dot alone)
#   dwlast - xent_kernel.DW_AFTER_DX=True (the head's weight-gradient dot waits for its dX dot, so
#           dX runs alone and dW beside the last layer's backward)
#   wglast - fp8_mlp.WGRAD_AFTER_DGRAD=True (each layer's weight-gradient dots, W2, W13, Wqkv and Wo,
#           wait for the input-gradient dot of the same weight); wgall = wglast and dwlast together;
#           wgsub - fp8_mlp.WGRAD_AFTER_DGRAD="sublayer" (the MLP's two wait for the whole MLP backward)
#           (all four removed in the thirtieth session for being slower: `git apply
#           bench/results/h100_session30/weight_grad_after_input_grad.patch` puts the switches back)
#   dhlate - fp8_mlp.DH_WEIGHT_AHEAD=False (each qkv_dot backward makes its bf16 w / s for dh itself,
#           as before the thirtieth session, instead of all layers' before the loop)
#   overs - fp8_mlp.QKV_GRAD_OVER_S=True (x Wqkv's cotangent handed over divided by s: no divide pass
#           over its weight gradients, no w / s copy; measured slower in the forty-second session and
#           removed: bench/results/h100_session42/qkv_grad_over_s.patch is its code, `git apply` on a
#           checkout of ac0e42d)
#   dqkv8 - --set=model.attn_fp8_dqkv=True (x Wqkv's backward dots in FP8 on e5m2 dQKV stored by the
#           attention's backward kernels, attention_kernel.flash_attention_qkv_fp8; forty-second session)
#   dhop - attention_kernel.DH_SCALE='operand' (attn_fp8_dqkv's dh with its 2^-k as the e5m2
#           operand's dequantization scale; forty-third session; no gain, removed in the forty-fifth:
#           run this script in a checkout of 59950e7)
#   dhnorm - attention_kernel.DH_SCALE='norm' (that 2^-k applied by the norm kernel that made h, as it
#           reads dh; forty-fourth session; the default since the forty-fifth); dhout - 'output', the
#           multiply on the dot's output (the default before)
#   ropeq - attention_kernel.ROPE_Q_IN_FWD=True (q rotated inside the attention forward, k alone by
#           rope_k_kernel; forty-fifth session; no gain in the step, removed in the forty-sixth:
#           `git apply bench/results/h100_session46/rope_q_in_fwd.patch` first); noropeq - False
#   wconst - a bound: the weights' e4m3 copies as constants made before the step
#           (bench/dev_weight_copies_bound.py; forty-fifth session); its loss is meaningless
#   noegrad - norm_kernel.EMBED_GRAD_IN_FIRST_NORM=False (the embedding's gradient by XLA's scatter, as
#           before the thirty-ninth session)
#   actlate - fp8_mlp.ACT_COPY_AFTER_W2=True (W2's token-last e4m3 act copy made after the forward's
#           W2 dot instead of before it, where it held that dot back ~27 us a layer; removed in the
#           thirty-first session for no gain: `git apply
#           bench/results/h100_session31/act_copy_after_w2.patch` puts it back)
#   oldstarts - train.window_starts as fold_in + randint (a chain of four small kernels at the step's
#           start), against the one threefry pass of bench/results/h100_session29/window_starts_threefry.patch
#           (no gain, not adopted: apply the patch first, or this variant is the tree itself)
#   bf16mom - --set=train.moment_dtype=bfloat16 (AdamW's moments stored in bf16: 20 instead of 28
#           bytes a parameter through the update)
#   h13   - --set=model.mlp_fp8_h13=True (x W13's output in e4m3 from cuBLASLt's epilogue, so the
#           SwiGLU kernels read half the bytes); noh13 the reverse
#   da    - --set=model.mlp_fp8_da=True (the backward's dY W2^T in e4m3 the same way, read by the SwiGLU
#           backward)
#   spc2, spc4 - --set=train.steps_per_call=2 or 4 (that many steps unrolled in one compiled call;
#           --steps counts calls, ms_per_step is per training step; tried in the thirty-first
#           session for no gain: `git apply bench/results/h100_session31/steps_per_call.patch` first)
#   tmaws - the attention's forward and FP8 backward on TMA descriptors with Triton's warp specialization
#           (bench/dev_tma_attention.py install_step('tma_ws'): jax-triton patched for a global scratch
#           buffer; forty-sixth session, untimed); tma - the same kernels without warp specialization
#   ptr, ptrc, ptrc2, ptrh, ptrhc, ptrhc2 - the attention's forward and FP8 backward as persistent kernels (a fixed grid,
#           each program looping over tiles; bench/dev_persistent_attention.py install_step; ptrc
#           caps registers at the tree's occupancy, ptrc2 deals over twice the resident programs)
#   one3, one4, dqfirst, one3c96 - the attention's FP8 backward (dQ and dK/dV) in one launch, the dK/dV
#           programs making delta themselves (bench/dev_bwd_one_launch.py install_step)
#   fp8ops, fp8qk, fp8s2 - the attention's q, k, v in e4m3 rows (a power-of-two scale per token and head) from an
#           e4m3-writing RoPE kernel, read by the forward and FP8 backward (bench/dev_attn_fp8_operands.py;
#           forty-eighth session; fp8qk: the forward's Q K^T as an FP8 dot; fp8sN: its forward at N stages)
#   mb2   - --set=train.microbatches=2 (the batch as two sequential halves, lax.scan; a control for mb2u)
#   mb2u  - the same with the scan unrolled, so the halves are two independent chains in one graph
#           that the concurrent command buffer may overlap (two-batch overlap; forty-sixth session)
#   NAME  - any other name: the Python statements in the environment variable PRE_NAME run before
#           bench_train.py, e.g. PRE_dq64="import attention_kernel as a; a._DQ[32] = (64, 64, 4, 3)"
#   lane  - xent_kernel.LANE_STATS=True (the loss kernel's per-lane statistics; only in the tree of
#           commit 324a5f6, reverted for being slower: run this script in a checkout of it)
# preceded by the loss kernel's sweep (bench/dev_memory_kernels.py --only=xent; SWEEP=0 skips it)
# and followed by the rounds paired against the first variant (bench/dev_paired.py) and a profiled
# step of each of PROFILE_VARIANTS (default: base; PROFILE=0 skips them).
# ROUNDS (default 2) sets how many times the variants are interleaved.
#   OUT=dir VARIANTS="base nogemm lane" bash bench/dev_step_variants.sh
set -uo pipefail
OUT=${OUT:-/tmp/step_variants}; mkdir -p "$OUT"
VARIANTS=${VARIANTS-base nogemm}   # VARIANTS="" times none (profiles only)
[ "${SWEEP:-1}" = 1 ] && timeout 150 python3 bench/dev_memory_kernels.py --only=xent --out="$OUT/xent_sweep.json" 2>&1 | grep -v Warn | tail -16
ARGS='"--cases=speedrun B128", "--backends=triton", "--warmup=3", "--steps=10", "--repeats=3"'
run() {  # variant, output[, extra bench_train arguments as a Python list's items]
  local pre="" flags="" set="${3:-}"
  case $1 in
    nopad) pre="import xent_kernel; xent_kernel.VOCAB_ALIGN = 1; " ;;
    attn8) set="$set"', "--set=model.attn_fp8=True"' ;;
    wgrad) set="$set"', "--set=model.mlp_fp8_wgrad=True"' ;;
    perlayer) pre="import fp8_mlp; fp8_mlp.STACKED_WEIGHTS = False; " ;;
    attn8perlayer) pre="import fp8_mlp; fp8_mlp.STACKED_WEIGHTS = False; "; set="$set"', "--set=model.attn_fp8=True"' ;;
    percast) pre="import model; model.STACKED_CASTS = False; " ;;
    nogemm) flags="--xla_gpu_enable_triton_gemm=false" ;;
    exhaustive) flags="--xla_gpu_exhaustive_tiling_search=true" ;;
    cublaslt) flags="--xla_gpu_enable_cublaslt=true" ;;
    concurrent) set="$set"', "--set=train.command_buffer_mode=concurrent"' ;;
    lhsbuf) set="$set"', "--set=train.command_buffer_mode=lhs"' ;;
    streams) pre="import streams; streams.STREAM = 1; " ;;
    streamsconc) pre="import streams; streams.STREAM = 1; "; set="$set"', "--set=train.command_buffer_mode=concurrent"' ;;
    lhs) flags="--xla_gpu_enable_latency_hiding_scheduler=true" ;;
    streamslhs) pre="import streams; streams.STREAM = 1; "; flags="--xla_gpu_enable_latency_hiding_scheduler=true" ;;
    hwrite) pre="import fp8_mlp; fp8_mlp.NORM_IN_WGRAD = False; " ;;
    xent4k) pre="import xent_kernel; xent_kernel.BLOCK_V = 4096; " ;;
    lane) pre="import xent_kernel; xent_kernel.LANE_STATS = True; " ;;
    roperot) pre="import attention_kernel; attention_kernel.FUSED_ROPE_FWD = True; " ;;
    wtrans) pre="import fp8_mlp; fp8_mlp.WEIGHT_TRANSPOSE = 'triton'; " ;;
    dxnat) pre="import xent_kernel; xent_kernel.DX_WEIGHT_T = False; " ;;
    dwlast) pre="import xent_kernel; xent_kernel.DW_AFTER_DX = True; " ;;
    wglast) pre="import fp8_mlp; fp8_mlp.WGRAD_AFTER_DGRAD = True; " ;;
    wgsub) pre="import fp8_mlp; fp8_mlp.WGRAD_AFTER_DGRAD = 'sublayer'; " ;;
    wgall) pre="import fp8_mlp, xent_kernel; fp8_mlp.WGRAD_AFTER_DGRAD = True; xent_kernel.DW_AFTER_DX = True; " ;;
    actlate) pre="import fp8_mlp; fp8_mlp.ACT_COPY_AFTER_W2 = True; " ;;
    dhlate) pre="import fp8_mlp; fp8_mlp.DH_WEIGHT_AHEAD = False; " ;;
    overs) pre="import fp8_mlp; fp8_mlp.QKV_GRAD_OVER_S = True; " ;;
    noegrad) pre="import norm_kernel; norm_kernel.EMBED_GRAD_IN_FIRST_NORM = False; " ;;
    oldstarts) pre="import jax, jax.numpy as jnp, train; train.window_starts = lambda k, s, b, n, t: jax.random.randint(jax.random.fold_in(k, s), (b,), 0, n - t, dtype=jnp.int32); " ;;
    bf16mom) set="$set"', "--set=train.moment_dtype=bfloat16"' ;;
    h13) set="$set"', "--set=model.mlp_fp8_h13=True"' ;;
    noh13) set="$set"', "--set=model.mlp_fp8_h13=False"' ;;
    da) set="$set"', "--set=model.mlp_fp8_da=True"' ;;
    dqkv8) set="$set"', "--set=model.attn_fp8_dqkv=True"' ;;
    dhop) pre="import attention_kernel; attention_kernel.DH_SCALE = 'operand'; " ;;
    dhnorm) pre="import attention_kernel; attention_kernel.DH_SCALE = 'norm'; " ;;
    ropeq) pre="import attention_kernel; attention_kernel.ROPE_Q_IN_FWD = True; " ;;
    noropeq) pre="import attention_kernel; attention_kernel.ROPE_Q_IN_FWD = False; " ;;
    dhout) pre="import attention_kernel; attention_kernel.DH_SCALE = 'output'; " ;;
    wconst) pre="import sys; sys.path.insert(0, 'bench'); import dev_weight_copies_bound; dev_weight_copies_bound.install(); " ;;
    tma|tmaws) pre="import sys; sys.path.insert(0, 'bench'); import dev_tma_attention; dev_tma_attention.install_step('${1/ws/_ws}'); " ;;
    ptr|ptrc|ptrc2|ptrh|ptrhc|ptrhc2) pre="import sys; sys.path.insert(0, 'bench'); import dev_persistent_attention; dev_persistent_attention.install_step('$1'); " ;;
    fp8ops|fp8qk|fp8s[124]) pre="import sys; sys.path.insert(0, 'bench'); import dev_attn_fp8_operands; dev_attn_fp8_operands.install_step('$1'); " ;;
    one3|one4|dqfirst|one3c96) pre="import sys; sys.path.insert(0, 'bench'); import dev_bwd_one_launch; dev_bwd_one_launch.install_step('$1'); " ;;
    mb2) set="$set"', "--set=train.microbatches=2"' ;;
    mb2u) pre="import functools, jax; jax.lax.scan = functools.partial(jax.lax.scan, unroll=True); "; set="$set"', "--set=train.microbatches=2"' ;;
    spc2) set="$set"', "--set=train.steps_per_call=2"' ;;
    spc4) set="$set"', "--set=train.steps_per_call=4"' ;;
    base) ;;
    *) local v="PRE_$1"; pre="${!v:-}"   # any other name: the Python in $PRE_<name>, run first
       [ -n "$pre" ] || { echo "unknown variant $1 (set PRE_$1 to the Python that makes it)"; return; }
       pre="$pre; " ;;
  esac
  XLA_FLAGS=$flags python3 -c "import runpy, sys; sys.argv = ['bench/bench_train.py', $ARGS$set, '--out=$2']; ${pre}runpy.run_path('bench/bench_train.py', run_name='__main__')" 2>&1 | tail -1
  # The figures in the log too, so a call that brings back few files still has them.
  python3 -c "import json; r = json.load(open('$2'))['results'][0]; print('$1: %.3f ms a step, %.0f tokens/s, MFU %.1f%%' % (r['ms_per_step'], r['tokens_per_s'], 100 * r['mfu']))" 2>/dev/null
}
for i in $(seq "${ROUNDS:-2}"); do
  for v in $VARIANTS; do echo "$v $i"; run "$v" "$OUT/step_${v}_$i.json"; done
done
# The rounds paired against the first variant (mean difference, rounds faster, paired t).
[ -n "$VARIANTS" ] && python3 bench/dev_paired.py "$OUT" $VARIANTS
if [ "${PROFILE:-1}" = 1 ]; then
  for v in ${PROFILE_VARIANTS:-base}; do
    echo "profile $v"; run "$v" "$OUT/step_profile_$v.json" ', "--profile=/tmp/trace_'"$v"'", "--profile_top=40"'
  done
fi
