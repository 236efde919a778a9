"""The SwiGLU MLP with three of its six matmuls in FP8 (model.py's mlp_fp8=True), four with fp8_w2,
five with fp8_wgrad as well, all six with fp8_wgrad_w2.

x W13 in the forward and both input gradients, dY W2^T and dH13 W13^T, take e4m3 operands on
cuBLASLt's FP8 path (fp32 accumulation, bf16 out). Activations and gradients get one scale per
row (the token: a row's scale factors out of every dot it enters, so it is applied to the dot's
output), weights one per tensor, each from the current values (no scale history to carry). The
forward's act W2 is bf16 too unless fp8_w2 (model.mlp_fp8_w2): its e4m3 operand is then written by
a Triton SwiGLU forward, and its row scale applied by the add+norm kernel that reads the dot's
output. The weight gradients are bf16, except W13's with fp8_wgrad (model.mlp_fp8_wgrad) and W2's with
fp8_wgrad_w2 (model.mlp_fp8_wgrad_w2, with fp8_w2): each is a sum over tokens, so one operand's row
scale moves into the other's copy (wgrad_fp8: dH13's into h's, act's into dY's), and both operands
need the token axis last (cuBLASLt's FP8 dots want the summed axis contiguous): one Triton pass
writes each copy (swiglu_kernel.transpose_fp8), where XLA's transposes of e4m3 arrays cost more than
the dot saves. W2's then reads the forward's e4m3 act, so no bf16 act is written or kept.
With fp8_h13 (model.mlp_fp8_h13) x W13's output is e4m3 itself, written by the dot's epilogue at
a scale bounded from W13 alone (out_scale), so both SwiGLU kernels read half the bytes; fp8_da
(model.mlp_fp8_da) does the same for the backward's dY W2^T.

Two implementations of the same arithmetic:
- `mlp_sublayer` (GPU, norm_backend='triton'): residual add + RMSNorm -> MLP -> residual add +
  the next RMSNorm as one custom VJP, so each quantization rides in a Triton kernel that already
  reads or writes that tensor (the norm kernels and the SwiGLU backward) and each per-row scale
  is applied where the dot's output is next read.
- `swiglu` (anywhere): plain XLA, the reference the kernels are tested against.

The attention's x Wqkv (model.py's attn_fp8=True) is the one dot here with a scale per tensor for
its activation too: `static_scale` bounds RMSNorm(x) * g from the gain alone, so the product's
scale is one number, which model.py folds into the RoPE tables (q, k) and into Wo (v), the places
that already read those values: no kernel in the attention changes, and no pass rescales qkv.
The LM head's forward logits (model.py's head_fp8=True, `head_logits`) use the same static scale on
the final norm's output; the loss kernel applies the product's scale as it reads the logits.
"""
import functools

import numpy as np

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn
F8_MAX = 448.0   # the largest finite e4m3fn value
_ONE = np.ones((1,), np.float32)   # a kernel's qmul when a row scale must not carry a weight's
# model.py quantizes all layers' MLP weights (and with attn_fp8 their Wqkv) in one go before the
# layer loop (mlp_weights, qkv_weights on the stacked blocks); False: each mlp_sublayer and qkv_dot
# quantizes its own (the measured alternative, docs/model.md).
STACKED_WEIGHTS = True
# With fp8_wgrad, mlp_sublayer's norm writes no bf16 h (only its e4m3 copy), and W13's weight
# gradient remakes h from the stream as it writes h's token-last copy (transpose_fp8's norm=);
# False: the norm writes h and the copy reads it (the measured alternative, docs/model.md).
NORM_IN_WGRAD = True
# With attn_fp8 and STACKED_WEIGHTS, the bf16 w / s that each qkv_dot backward's dh reads is made for
# all layers before the loop (qkv_weights(w, qh)), so it depends on the weights alone. Made in the
# backward (False), XLA fused layer 0's into one pass with every layer's dw / s, so layer 0's dh dot
# waited for all four weight gradients (the thirtieth session's H100 HLO dump). Ahead, that dot
# starts 13 us after the attention backward instead of 100; the B128 step measured 8.303 vs 8.333 ms
# (means of five interleaved pairs, 3 of 5 faster: at the noise; `dhlate` in bench/dev_step_variants.sh).
DH_WEIGHT_AHEAD = True
# model.py's parallel block on the fused path (parallel_sublayer): each norm, the first one too, hands
# the next MLP its row-scaled e4m3 copy and takes that MLP's share of h's gradient back unscaled
# with its row scales, which its backward kernel adds to the attention's share as it reads both
# (norm_kernel.backward's dh2). Off until timed on a GPU: built in the fifty-third session, which got
# no machine (bench/results/h100_session53/call1.sh times it). False: layer 0's copy is XLA's
# quantize_rows, and XLA sums the two shares into one [N, D] gradient for the norm to read.
PARALLEL_HANDOFF = False
# With the hand-off and attn_fp8_dqkv, the norms write no bf16 h but the last (the head's): the
# attention reads only h's e4m3 copy, and W13's weight gradient remakes h from the stream and rstd.
PARALLEL_H_UNWRITTEN = True
# With the hand-off and attn_fp8_dqkv, W13's weight gradient reads h's static e4m3 copy token-last,
# the one x Wqkv's weight gradient reads (made once a layer), with dH13's row scales moved into its
# own token-last copy (wgrad_static_h): no scaled copy of h a layer. False: h's copy scaled by dH13's
# rows (wgrad_kernels), remade from the stream.
PARALLEL_W13_STATIC_H = False


def quantize_rows(x):
  """x [..., K] -> (e4m3 of x * q, 1 / q as fp32 [...]) with q = 448 / max|row| (0 rows stay 0)."""
  x = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x), -1)
  q = F8_MAX / jnp.maximum(amax, 1e-30)
  return jnp.clip(x * q[..., None], -F8_MAX, F8_MAX).astype(E4M3), amax / F8_MAX


def quantize_tensor(w):
  """w [..., A, B] -> (e4m3 of w * q, 1 / q as fp32 [..., 1]) with q = 448 / max|w| per matrix (the
  last two axes): a 1-element scale for one matrix, one per layer for a stack."""
  w = w.astype(jnp.float32)
  amax = jnp.max(jnp.abs(w), axis=(-2, -1))
  q = F8_MAX / jnp.maximum(amax, 1e-30)
  return jnp.clip(w * q[..., None, None], -F8_MAX, F8_MAX).astype(E4M3), (amax / F8_MAX)[..., None]


def mlp_weights(w13_D2F, w2_FD):
  """The e4m3 weights of mlp_sublayer, (w13_8 [D, 2F], its transpose, s13, w2_8 [F, D], s2, w2_8's
  transpose, c13, c2), of one layer or, with a leading layer axis on both, of all layers at once: a
  few passes for the whole stack instead of several small launch-bound ones per layer (model.py
  slices out each layer's). w2_8's transpose is used with fp8_w2 only, c13 (out_scale of x W13)
  with fp8_h13 only, c2 (of dY W2^T) with fp8_da only; XLA drops what is unused. Made here for
  the stack, c13 and c2 cost a few kernels a step instead of a few per layer each (H100 profiles:
  283 instead of 288 kernels a step, 290 instead of 300 with fp8_da; docs/model.md)."""
  w13_8, s13 = quantize_tensor(jax.lax.stop_gradient(w13_D2F).reshape(*w13_D2F.shape[:-2], -1))
  w2_8, s2 = quantize_tensor(jax.lax.stop_gradient(w2_FD))
  w13_8T = jnp.swapaxes(w13_8, -1, -2)
  return w13_8, w13_8T, s13, w2_8, s2, jnp.swapaxes(w2_8, -1, -2), out_scale(w13_8T, -1), out_scale(w2_8, -1)


def static_scale(gain_D):
  """q (1-element fp32) such that e4m3(h * q) cannot overflow for h = RMSNorm(x) * gain: a row of
  RMS 1 has |x_i| <= sqrt(D), so |h_i| <= sqrt(D) max|g|. From the 512 gains alone, no pass over h;
  typical values land near 448 / sqrt(D) ~ 20, inside e4m3's normal range like a per-row scale's
  (its relative precision is the same across that range)."""
  bound = jnp.sqrt(float(gain_D.shape[-1])) * jnp.max(jnp.abs(gain_D.astype(jnp.float32)))
  return jax.lax.stop_gradient(F8_MAX / jnp.maximum(bound, 1e-30)).reshape(1)


def quantize_static(h, q):
  """e4m3 of h * q (q a 1-element array, from static_scale), clipped: norm_kernel's fp8_rows=False copy."""
  return jnp.clip(h.astype(jnp.float32) * q, -F8_MAX, F8_MAX).astype(E4M3)


def dot8(a8_NK, b8, b_contract, out=jnp.bfloat16):
  """a8 [N, K] . b8 (its axis b_contract is K), both e4m3: unscaled, fp32 accumulation, `out` dtype."""
  return jax.lax.dot_general(a8_NK, b8, (((1,), (b_contract,)), ((), ())), preferred_element_type=out)


def out_scale(b8, contract):
  """c (0-d fp32) such that e4m3(raw * c) cannot overflow for raw = a8 b8, a8 an e4m3 copy scaled per
  row (every entry <= 448, as the norm kernels write them): by Cauchy-Schwarz |raw[t, j]| <= 448
  sqrt(K) |b8_j|, so c = 1 / (sqrt(K) max_j |b8_j|) keeps raw * c <= 448, and no smaller c would
  (a row lined up with b8's largest column, all entries at 448, reaches it). From the weight alone,
  like static_scale: no pass over the output for its max. b8: one layer's e4m3 weight, contract its
  axis of length K (as dot8's b_contract). A typical raw * c is ~448 cos(a_t, b_j) / (max|a8_t| /
  rms(a8_t)), a few units for near-orthogonal rows, ~2^8 above e4m3's smallest normal (2^-6).
  The MLP's x W13 (fp8_h13) and dY W2^T (fp8_da) use it. b8 may carry leading (layer) axes: contract
  is then one of the last two (negative), and c comes out per layer."""
  assert contract in (b8.ndim - 2, b8.ndim - 1, -2, -1), "contract one of a matrix's two axes"
  col2 = jnp.sum(jnp.square(b8.astype(jnp.float32)), axis=contract)
  return jax.lax.stop_gradient(1.0 / jnp.maximum(jnp.sqrt(b8.shape[contract] * jnp.max(col2, axis=-1)), 1e-30))


def dot8_e4m3(a8_NK, b8, b_contract, c):
  """e4m3(a8 . b8 * c), clipped (out_scale's c never clips): cuBLASLt's FP8 GEMM writes the e4m3
  output from its fp32 accumulator, the scale and clamp in its epilogue (XLA's GEMM rewriter fuses
  this pattern; an H100 took 81 vs 90 us for x W13 at the speedrun shape with a bf16 output:
  bench/dev_fp8_out_gemm.py), so the dot writes half the bytes and the SwiGLU kernels read half."""
  return jnp.clip(dot8(a8_NK, b8, b_contract, out=jnp.float32) * c, -F8_MAX, F8_MAX).astype(E4M3)


def wgrad_fp8(h_ND, r_N, dh8_NE):
  """h^T dH in fp32 [D, E] from e4m3 operands, where dH = dh8 * r[token] (r: dh8's per-row scale):
  W13's weight gradient (h, dH13) and, transposed, W2's (dY, act). The sum over tokens cannot take a
  per-token scale on its output, so r moves into h's copy, e4m3(h * r * Q), with one Q for the
  tensor: 448 / max over tokens of max|h[t]| r[t], the tightest that cannot overflow. Both copies
  have the token axis last, as cuBLASLt's FP8 dots want for a sum over it. XLA's transposes here;
  mlp_sublayer makes the same copies in Triton passes (swiglu_kernel.transpose_fp8; wgrad_kernels)
  and takes max|h[t]| from row scales its kernels already wrote."""
  h_ND = jax.lax.stop_gradient(h_ND).astype(jnp.float32)
  r_N = jax.lax.stop_gradient(r_N.astype(jnp.float32))
  q = F8_MAX / jnp.maximum(jnp.max(jnp.max(jnp.abs(h_ND), -1) * r_N), 1e-30)
  h8_DN = jnp.clip(h_ND * (r_N * q)[:, None], -F8_MAX, F8_MAX).astype(E4M3).T
  return dot8(h8_DN, dh8_NE.T, 1, out=jnp.float32) / q


def silu_mul_scaled(h13_N2F, scale_N, dtype):
  """silu(gate) * up of an FP8 dot's unscaled [gate | up] output whose rows are to be scaled by scale_N."""
  F = h13_N2F.shape[1] // 2
  h = h13_N2F.astype(jnp.float32) * scale_N[:, None]
  return (jax.nn.silu(h[:, :F]) * h[:, F:]).astype(dtype)


# ----------------------------------------------------------------------------- the XLA reference


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def swiglu(h_BTD, w13_D2F, w2_FD, dtype, fp8_w2=False, fp8_wgrad=False, fp8_wgrad_w2=False, fp8_h13=False,
           fp8_da=False):
  """W2(SiLU(h W1) * (h W3)), w13 = [W1 | W3] as D x 2 x F (fp32 masters), with the module's FP8 dots
  (act W2 among them with fp8_w2, W13's weight gradient with fp8_wgrad, W2's with fp8_wgrad_w2 and
  fp8_w2: wgrad_fp8; x W13's output in e4m3 with fp8_h13 and dY W2^T's with fp8_da: dot8_e4m3);
  outputs in dtype."""
  return _ref_fwd(h_BTD, w13_D2F, w2_FD, dtype, fp8_w2, fp8_wgrad, fp8_wgrad_w2, fp8_h13, fp8_da)[0]


def _ref_fwd(h_BTD, w13_D2F, w2_FD, dtype, fp8_w2=False, fp8_wgrad=False,  # pylint: disable=unused-argument
             fp8_wgrad_w2=False, fp8_h13=False, fp8_da=False):
  B, T, D = h_BTD.shape
  h_ND = h_BTD.reshape(B * T, D).astype(dtype)
  h8, hs = quantize_rows(h_ND)
  w13_8, s13 = quantize_tensor(w13_D2F.reshape(D, -1))
  if fp8_h13:
    c13 = out_scale(w13_8, 0)
    h13_N2F, hs13 = dot8_e4m3(h8, w13_8, 0, c13), hs * s13 / c13
  else:
    h13_N2F, hs13 = dot8(h8, w13_8, 0), hs * s13
  act_NF = silu_mul_scaled(h13_N2F, hs13, dtype)
  if fp8_w2:
    a8, as_ = quantize_rows(act_NF)
    w2_8, s2 = quantize_tensor(w2_FD)
    y_ND = (dot8(a8, w2_8, 0).astype(jnp.float32) * (as_ * s2)[:, None]).astype(dtype)
  else:
    y_ND = jnp.dot(act_NF, w2_FD.astype(dtype))
  return y_ND.reshape(B, T, D), (h_ND, h13_N2F, hs13, act_NF, w13_8, s13, w13_D2F, w2_FD)


def _ref_bwd(dtype, fp8_w2, fp8_wgrad, fp8_wgrad_w2, fp8_h13, fp8_da, res, dy_BTD):  # pylint: disable=unused-argument
  h_ND, h13_N2F, hs, act_NF, w13_8, s13, w13_D2F, w2_FD = res
  B, T, D = dy_BTD.shape
  dy_ND = dy_BTD.reshape(B * T, D).astype(dtype)
  w2_8, s2 = quantize_tensor(w2_FD)
  dy8, dys = quantize_rows(dy_ND)
  if fp8_da:
    c2 = out_scale(w2_8, 1)
    da_NF = dot8_e4m3(dy8, w2_8, 1, c2).astype(jnp.float32) * (dys * s2 / c2)[:, None]
  else:
    da_NF = dot8(dy8, w2_8, 1).astype(jnp.float32) * (dys * s2)[:, None]
  if fp8_w2 and fp8_wgrad_w2:   # act = a8 * as[token]: as moves into dY's copy
    a8, as_ = quantize_rows(act_NF)
    dw2 = wgrad_fp8(dy_ND, as_, a8).T
  else:
    dw2 = jnp.dot(act_NF.T, dy_ND, preferred_element_type=jnp.float32)
  _, vjp = jax.vjp(lambda h: silu_mul_scaled(h, jnp.ones_like(hs), jnp.float32),
                   h13_N2F.astype(jnp.float32) * hs[:, None])
  dh13_N2F = vjp(da_NF)[0].astype(dtype)
  dh8, dhs = quantize_rows(dh13_N2F)
  dx_ND = (dot8(dh8, w13_8, 1).astype(jnp.float32) * (dhs * s13)[:, None]).astype(dtype)
  if fp8_wgrad:
    dw13 = wgrad_fp8(h_ND, dhs, dh8)
  else:
    dw13 = jnp.dot(h_ND.T, dh13_N2F, preferred_element_type=jnp.float32)
  return (dx_ND.reshape(B, T, D), dw13.reshape(w13_D2F.shape).astype(w13_D2F.dtype), dw2.astype(w2_FD.dtype))


swiglu.defvjp(_ref_fwd, _ref_bwd)


# ----------------------------------------------------------------------------- the attention's x Wqkv


def qkv_weights(w_DE, qh=None, fp8_dh=False):
  """qkv_dot's e4m3 weight and its scale, (w8 [E, D], sw [1]): quantized in the [E, D] layout, both
  operands K-major as cuBLASLt's FP8 path wants (the backward's dh is bf16 and needs no e4m3 copy
  of w in the other layout). Of one layer or, w [L, D, E], of all layers at once (model.py). With
  qh (the static scale of h, [1] or [L, 1]), a third: the backward's bf16 w / s (s = sw / qh), made
  here, before the layer loop, rather than in the backward (DH_WEIGHT_AHEAD); with fp8_dh
  (model.attn_fp8_dqkv), the third is w8's own transpose [D, E], dh's e4m3 operand in
  attention_kernel.flash_attention_qkv_fp8."""
  w_DE = jax.lax.stop_gradient(w_DE)
  w8_ED, sw = quantize_tensor(jnp.swapaxes(w_DE, -1, -2))
  if fp8_dh:
    return w8_ED, sw, jnp.swapaxes(w8_ED, -1, -2)
  if qh is None:
    return w8_ED, sw
  return w8_ED, sw, _dh_weight(w_DE, jax.lax.stop_gradient(sw / qh))


def _dh_weight(w_DE, s):
  """The bf16 w / s that dh = d_raw (w / s)^T reads (s [1], or [L, 1] for a stack)."""
  return (w_DE / s[..., None]).astype(jnp.bfloat16)


@jax.custom_vjp
def qkv_dot(h_ND, h8_ND, qh, w_DE, w8=None):
  """(raw [N, E] bf16, s [1] fp32) with raw * s ~= h w: e4m3(h * qh) (h8, from quantize_static or the
  norm kernel) times w in e4m3 with its own scale (w8 = qkv_weights(w[, qh]) when the caller made
  it); s = the product of both dequantization scales, left for the caller to fold into whatever
  reads raw. Backward as for raw * s = h w (s a constant): dh = d_raw (w / s)^T in bf16 (w8's third
  item when given), dw = h^T d_raw / s; nothing flows to h8, qh or w8."""
  return _qkv_fwd(h_ND, h8_ND, qh, w_DE, w8)[0]


def _qkv_fwd(h_ND, h8_ND, qh, w_DE, w8=None):
  w8_ED, sw = qkv_weights(w_DE) if w8 is None else w8[:2]
  s = jax.lax.stop_gradient(sw / qh)
  raw_NE = dot8(h8_ND, w8_ED, 1)
  wd_DE = w8[2] if w8 is not None and len(w8) > 2 else None
  # w8's cotangent, (None, ...) (no leaves, so a valid residual) when it was given.
  return (raw_NE, s), (h_ND, h8_ND, qh, w_DE, s, wd_DE, None if w8 is None else (None,) * len(w8))


def _qkv_bwd(res, cotangents):
  h_ND, h8_ND, qh, w_DE, s, wd_DE, w8_cot = res
  d_raw = cotangents[0]
  # d_raw = s dL/d(h w): the true gradients are these products divided by s (~1e-5; the division
  # rides on the bf16 cast of w and on the small fp32 dw).
  dh_ND = jnp.dot(d_raw, (_dh_weight(w_DE, s) if wd_DE is None else wd_DE).astype(d_raw.dtype).T)
  dw_DE = jnp.dot(h_ND.T, d_raw, preferred_element_type=jnp.float32) / s
  return (dh_ND.astype(h_ND.dtype), jnp.zeros_like(h8_ND), jnp.zeros_like(qh), dw_DE.astype(w_DE.dtype),
          w8_cot)


qkv_dot.defvjp(_qkv_fwd, _qkv_bwd)


# ----------------------------------------------------------------------------- the LM head's logits


def head_logits(h8_ND, qh, w_VD):
  """(raw [N, V] bf16, xs [1] fp32) with raw * xs ~= h w^T: the head's forward dot (model.head_fp8)
  on e4m3(h * qh) (the final norm's static-scaled copy) and w's e4m3 copy, one scale for the tensor,
  made here from w (a [V, D] bf16 weight, the vocabulary padded or not). The loss multiplies xs in as
  it reads raw, so no pass rescales the [N, V] logits; no gradient flows through here (the loss's
  backward takes the bf16 h and w). xs is floored so that an all-zero w gives zero logits, not 0/0."""
  w8_VD, sw = quantize_tensor(jax.lax.stop_gradient(w_VD))
  raw_NV = dot8(jax.lax.stop_gradient(h8_ND), w8_VD, 1)
  return raw_NV, jax.lax.stop_gradient(jnp.maximum(sw.reshape(1) / qh, 1e-30))


# ----------------------------------------------------------------------------- the fused GPU path


def _mlp_fwd(h8, hs, w8, w2_FD, shape, dtype, fp8_w2, fp8_wgrad_w2, fp8_h13):
  """The MLP from its input's e4m3 copy h8 and row scales hs (which carry W13's scale s13): (y, its
  row scales or None, h13, h13's row scales, what W2's weight gradient reads). y is x W2's unscaled
  FP8 output with fp8_w2 (the norm kernel that reads it applies the scales), else bf16.
  w8 = (w13_8T, s2, w2_8T, c13) of mlp_weights."""
  w13_8T, s2, w2_8T, c13 = w8
  # cuBLASLt's FP8 dots want both operands K-major. hs13: the rows' scale of h13 (hs, which carries
  # s13, over the e4m3 output's c13); hs itself stays for W13's weight gradient.
  if fp8_h13:
    h13_N2F, hs13 = dot8_e4m3(h8, w13_8T, 1, c13), hs / c13
  else:
    h13_N2F, hs13 = dot8(h8, w13_8T, 1), hs
  if fp8_w2:
    import swiglu_kernel  # pylint: disable=import-outside-toplevel
    # With fp8_wgrad_w2, act's own row scales (max|act[t]| / 448) are kept for W2's gradient, so
    # they must not carry s2: zero for a zero W2 (zero_init_out), which would zero that gradient.
    act_NF, a8, a_scale = swiglu_kernel.forward_fp8(h13_N2F, hs13, _ONE if fp8_wgrad_w2 else s2,
                                                    write_act=not fp8_wgrad_w2, dtype=dtype)
    y_scale = a_scale * s2 if fp8_wgrad_w2 else a_scale
    y_BTD = dot8(a8, w2_8T, 1).reshape(shape)   # unscaled: the norm kernel applies y_scale
    act_NF = (a8, a_scale) if fp8_wgrad_w2 else act_NF   # what W2's weight gradient reads
  else:
    act_NF = silu_mul_scaled(h13_N2F, hs13, dtype)
    y_BTD, y_scale = jnp.dot(act_NF, w2_FD.astype(dtype)).reshape(shape), None
  return y_BTD, y_scale, h13_N2F, hs13, act_NF


def _mlp_bwd_dh(d8, ds, h13_N2F, hs13, w8, dtype, fp8_w2, fp8_wgrad, fp8_wgrad_w2, fp8_da):
  """The MLP's backward down to its input: (dh unscaled [N, D], its row scales dhs, dH13 in bf16 or
  None with fp8_wgrad, dH13's e4m3 copy) from dY's e4m3 copy d8 and row scales ds (without W2's
  scale s2 when W2's weight gradient is FP8 too). w8 = (w13_8, s13, w2_8, s2, c2) of mlp_weights."""
  import swiglu_kernel  # pylint: disable=import-outside-toplevel
  w13_8, s13, w2_8, s2, c2 = w8
  das = ds * s2 if fp8_w2 and fp8_wgrad_w2 else ds   # dA's row scales: dY's, with W2's scale
  if fp8_da:   # dA in e4m3 from the dot's epilogue; its scale c2 moves into the rows'
    da_NF, das = dot8_e4m3(d8, w2_8, 1, c2), das / c2
  else:
    da_NF = dot8(d8, w2_8, 1)
  dh13_N2F, dh8, dhs = swiglu_kernel.backward_fp8(h13_N2F, hs13, da_NF, das, s13, write_dh13=not fp8_wgrad,
                                                  dtype=dtype)
  return dot8(dh8, w13_8, 1), dhs, dh13_N2F, dh8


def _mlp_bwd_w(d_y, ds, act_NF, h_src, hs, dh13_N2F, dh8, dhs, s13, fp8_w2, fp8_wgrad, fp8_wgrad_w2):
  """The MLP's weight gradients (dW13 [D, 2F], dW2 [F, D], fp32) from dY [..., D]. h_src = (h [..., D],
  None), or with fp8_wgrad (the stream s [..., D], (rstd, gain, dtype)) for W13's gradient to remake
  h from (NORM_IN_WGRAD)."""
  D = d_y.shape[-1]
  if fp8_w2 and fp8_wgrad_w2:
    dw2 = wgrad_kernels(d_y.reshape(-1, D), ds, *act_NF, _ONE).T
  else:
    dw2 = jnp.dot(act_NF.T, d_y.reshape(-1, D), preferred_element_type=jnp.float32)
  if fp8_wgrad:
    dw13 = wgrad_kernels(h_src[0].reshape(-1, D), hs, dh8, dhs, s13, norm=h_src[1])
  else:
    dw13 = jnp.dot(h_src[0].reshape(-1, D).T, dh13_N2F, preferred_element_type=jnp.float32)
  return dw13, dw2


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 10, 11, 12, 13, 14, 15))
def mlp_sublayer(x_BTD, attn_BTD, g_mlp, w13_D2F, w2_FD, g_next, dtype, fp8_w2=False, q_next=None, w8=None,
                 keep_x=True, fp8_wgrad=False, fp8_wgrad_w2=False, fp8_h13=False, fp8_da=False, dh_mul=1.0):
  """(x', h') with s = x + attn, x' = s + MLP(RMSNorm(s) * g_mlp), h' = RMSNorm(x') * g_next: the
  values of norm_kernel.add_rms_norm -> swiglu -> add_rms_norm, with the MLP's FP8 dots (act W2
  among them with fp8_w2). With q_next (static_scale(g_next)), a third output:
  quantize_static(h', q_next), for qkv_dot. w8: this layer's mlp_weights, when the caller made them
  (for all layers at once); else they are made here. keep_x=False (the last layer, whose stream
  only the final norm reads): x' comes out as None, so its gradient is no B x T x D of zeros that
  XLA writes (21 us a B128 step on the H200) and the norm backward reads. fp8_wgrad: W13's weight
  gradient as an e4m3 dot (wgrad_fp8), its token-last operands written by swiglu_kernel.transpose_fp8,
  and the SwiGLU backward without its bf16 dH13. fp8_wgrad_w2 (with fp8_w2): W2's the same way, from
  the forward's e4m3 act, and the SwiGLU forward without its bf16 act. fp8_h13: x W13's output in
  e4m3 (dot8_e4m3 at out_scale), which both SwiGLU kernels read instead of bf16; fp8_da: the
  backward's dY W2^T too, which the SwiGLU backward reads. dh_mul (a Python float): h' gets its
  gradient that many times too small, the backward's norm kernel multiplies it back
  (norm_kernel.backward's dh_mul)."""
  return _fwd(x_BTD, attn_BTD, g_mlp, w13_D2F, w2_FD, g_next, dtype, fp8_w2, q_next, w8, keep_x, fp8_wgrad,
              fp8_wgrad_w2, fp8_h13, fp8_da, dh_mul)[0]


def _fwd(x_BTD, attn_BTD, g_mlp, w13_D2F, w2_FD, g_next, dtype, fp8_w2=False, q_next=None, w8=None, keep_x=True,
         fp8_wgrad=False, fp8_wgrad_w2=False, fp8_h13=False, fp8_da=False, dh_mul=1.0):  # pylint: disable=unused-argument  (fp8_wgrad, dh_mul: the same forward)
  import norm_kernel  # pylint: disable=import-outside-toplevel  (UserError without triton/GPU)
  B, T, D = x_BTD.shape
  w13_8, w13_8T, s13, w2_8, s2, w2_8T, c13, c2 = mlp_weights(w13_D2F, w2_FD) if w8 is None else w8
  # h itself is read again only by W13's weight gradient, which can remake it (NORM_IN_WGRAD).
  s_BTD, h_BTD, rstd1, (h8, hs) = norm_kernel.forward(x_BTD, attn_BTD, g_mlp, dtype, fp8_qmul=s13,
                                                      write_h=not (fp8_wgrad and NORM_IN_WGRAD))
  y_BTD, y_scale, h13_N2F, hs13, act_NF = _mlp_fwd(h8, hs, (w13_8T, s2, w2_8T, c13), w2_FD, (B, T, D), dtype,
                                                   fp8_w2, fp8_wgrad_w2, fp8_h13)
  x_out, h_next, rstd2, fp8 = norm_kernel.forward(s_BTD, y_BTD, g_next, dtype, fp8_qmul=q_next, fp8_rows=False,
                                                  y_scale=y_scale)
  res = (s_BTD, rstd1, h_BTD, h13_N2F, hs, hs13, act_NF, x_out, rstd2, w13_8, s13, w2_8, s2, c2, g_mlp, g_next,
         jnp.zeros((0,), attn_BTD.dtype), jnp.zeros((0,), w13_D2F.dtype), jnp.zeros((0,), w2_FD.dtype), q_next,
         None if w8 is None else ())   # () marks a given w8 (a leafless pytree, unlike a bool)
  outs = (x_out if keep_x else None, h_next)
  return (outs if q_next is None else (*outs, fp8[0].reshape(x_out.shape))), res


def _bwd(dtype, fp8_w2, keep_x, fp8_wgrad, fp8_wgrad_w2, fp8_h13, fp8_da, dh_mul, res, cotangents):  # pylint: disable=unused-argument
  import norm_kernel  # pylint: disable=import-outside-toplevel
  (s_BTD, rstd1, h_BTD, h13_N2F, hs, hs13, act_NF, x_out, rstd2, w13_8, s13, w2_8, s2, c2, g_mlp, g_next, attn_like,
   w13_like, w2_like, q_next, w8_mark) = res
  cotangents = cotangents[:2]   # the e4m3 copy's (when q_next is given) is zero: qkv_dot passes nothing to it
  B, T, D = x_out.shape
  F = w2_8.shape[0]
  dx_out = cotangents[0] if keep_x else None
  w2_wgrad8 = fp8_w2 and fp8_wgrad_w2   # act_NF is then the forward's (a8, max|act[t]| / 448)
  # dY's row scales without s2 for W2's gradient too (as act's above); dA's take s2 in _mlp_bwd_dh.
  d_s, d_y, dg_next, (d8, ds) = norm_kernel.backward(dx_out, cotangents[1], x_out, rstd2, g_next, dtype,
                                                     fp8_qmul=_ONE if w2_wgrad8 else s2, dh_mul=dh_mul)
  dh_ND, dhs, dh13_N2F, dh8 = _mlp_bwd_dh(d8, ds, h13_N2F, hs13, (w13_8, s13, w2_8, s2, c2), dtype, fp8_w2,
                                          fp8_wgrad, fp8_wgrad_w2, fp8_da)
  dx, dattn, dg_mlp = norm_kernel.backward(d_s, dh_ND, s_BTD, rstd1, g_mlp, attn_like.dtype, dh_scale=dhs)
  # Without h (NORM_IN_WGRAD), W13's gradient remakes h's copy from the stream, its rstd and the gain.
  src = (s_BTD, (rstd1, g_mlp, dtype)) if h_BTD is None else (h_BTD, None)
  dw13, dw2 = _mlp_bwd_w(d_y, ds, act_NF, src, hs, dh13_N2F, dh8, dhs, s13, fp8_w2, fp8_wgrad,
                         fp8_wgrad_w2)
  return (dx, dattn, dg_mlp, dw13.reshape(D, 2, F).astype(w13_like.dtype), dw2.astype(w2_like.dtype), dg_next,
          None if q_next is None else jnp.zeros_like(q_next), None if w8_mark is None else (None,) * 8)


mlp_sublayer.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(12, 13, 14, 15, 16, 17, 18, 19, 20))
def parallel_sublayer(x_BTD, attn_BTD, h_BTD, h8, hs, h_from, w13_D2F, w2_FD, g_next, q_next, q_rows, w8, dtype,
                      keep_x=True, fp8_h13=False, fp8_da=False, dh_mul=1.0, dh_mul_in=1.0, handoff=False,
                      write_h=True, static_h=False):
  """The parallel block's MLP and the add + norm after it (model.py's parallel_block on the fused
  path): x' = x + attn + MLP(h), h' = RMSNorm(x') * g_next, where h = RMSNorm(x) * g is the layer's
  one normed input, which the attention read too, and (h8, hs) its e4m3 copy with row scales that
  carry W13's scale (as norm_kernel.forward's fp8_qmul=s13 writes them). Returns (x' or None with
  keep_x=False, h', e4m3(h' * q_next) or None, then four items for the next MLP: with q_rows (the
  next W13's scale) and handoff, norm_kernel.parallel_handoff's (h_mlp', h8r', hs', rstd'); with
  q_rows alone (None, h8r', hs', None), where the next MLP reads h' as its h; else four None). All
  four MLP dots are e4m3 (mlp_fp8_w2) and so are both weight gradients (mlp_fp8_wgrad,
  mlp_fp8_wgrad_w2), as in the speedrun config; fp8_h13 and fp8_da as in mlp_sublayer. w8: this
  layer's mlp_weights, or None to make them here.

  h's gradient: without handoff, the MLP's share leaves as h's cotangent, under dh_mul_in's
  convention (h's norm made it for an attention too, whose raw share it is added to: it is handed
  over dh_mul_in times too small, attention_kernel's dh_raw), and JAX adds the attention's. With
  handoff (h from a norm's parallel_handoff), the share leaves unscaled as h's cotangent, its row
  scales as hs's, for that norm's backward to add in (norm_kernel.backward's dh2): no [N, D] sum.
  What W13's weight gradient reads, h_from: None, h itself; (rstd, gain) of h's norm, h remade from
  the stream x (h was not written: write_h=False upstream); with static_h, (h's static e4m3 copy
  token-last [D, N], its scale qh [1]), the copy x Wqkv's weight gradient reads
  (wgrad_static_h). dh_mul (a Python float), as in mlp_sublayer: h' gets its gradient that many
  times too small and the norm's backward multiplies it back. write_h=False: h' is not written
  (zeros come out), for an attention that takes only its gradient (attn_fp8_dqkv) and a next MLP
  that does not read it."""
  return _par_fwd(x_BTD, attn_BTD, h_BTD, h8, hs, h_from, w13_D2F, w2_FD, g_next, q_next, q_rows, w8, dtype, keep_x,
                  fp8_h13, fp8_da, dh_mul, dh_mul_in, handoff, write_h, static_h)[0]


def _par_fwd(x_BTD, attn_BTD, h_BTD, h8, hs, h_from, w13_D2F, w2_FD, g_next, q_next, q_rows, w8, dtype, keep_x=True,  # pylint: disable=unused-argument  (the backward's)
             fp8_h13=False, fp8_da=False, dh_mul=1.0, dh_mul_in=1.0, handoff=False, write_h=True, static_h=False):
  import norm_kernel  # pylint: disable=import-outside-toplevel  (UserError without triton/GPU)
  w13_8, w13_8T, s13, w2_8, s2, w2_8T, c13, c2 = mlp_weights(w13_D2F, w2_FD) if w8 is None else w8
  y_BTD, y_scale, h13_N2F, hs13, act_NF = _mlp_fwd(h8, hs, (w13_8T, s2, w2_8T, c13), w2_FD, x_BTD.shape, dtype,
                                                   True, True, fp8_h13)
  x_out, h_next, rstd, h8_next, rows_next = norm_kernel.forward_parallel(x_BTD, attn_BTD, y_BTD, y_scale, g_next,
                                                                        dtype, q_next, q_rows, write_h)
  h_next = norm_kernel._h_or_zeros(h_next, x_BTD.shape, dtype)  # pylint: disable=protected-access
  if rows_next is None:
    nxt = (None,) * 4
  else:
    nxt = norm_kernel.parallel_handoff(h_next, rstd, rows_next) if handoff else (None, *rows_next, None)
  # What W13's weight gradient reads (see h_from): h, the stream, or nothing of the forward's here.
  src = h_BTD if h_from is None else None if static_h else x_BTD
  res = (x_out, rstd, src, h_from, hs, h13_N2F, hs13, act_NF, w13_8, s13, w2_8, s2, c2, g_next, q_next, q_rows,
         jnp.zeros((0,), h_BTD.dtype), jnp.zeros((0,), w13_D2F.dtype), jnp.zeros((0,), w2_FD.dtype),
         None if w8 is None else ())
  return (x_out if keep_x else None, h_next, h8_next, *nxt), res


def _par_bwd(dtype, keep_x, fp8_h13, fp8_da, dh_mul, dh_mul_in, handoff, write_h, static_h, res, cotangents):  # pylint: disable=unused-argument
  import norm_kernel  # pylint: disable=import-outside-toplevel
  (x_out, rstd, src, h_from, hs, h13_N2F, hs13, act_NF, w13_8, s13, w2_8, s2, c2, g_next, q_next, q_rows, h_like,
   w13_like, w2_like, w8_mark) = res
  D, F = x_out.shape[-1], w2_8.shape[0]
  # The e4m3 copies' cotangents are zero: the dots that read them pass nothing back through them.
  dx_out = cotangents[0] if keep_x else None
  # The next MLP's share of h''s gradient, unscaled, and its row scales (the hand-off's h_mlp', hs').
  dh2 = (cotangents[3], cotangents[5]) if handoff and q_rows is not None else None
  # One gradient for the stream, the attention's output and the MLP's; its e4m3 copy (row scales
  # without s2, which _mlp_bwd_dh applies) for dY W2^T and W2's weight gradient.
  d_s, d_y, dg_next, (d8, ds) = norm_kernel.backward(dx_out, cotangents[1], x_out, rstd, g_next, dtype, fp8_qmul=_ONE,
                                                     dh_mul=dh_mul, dh2=dh2)
  dh_ND, dhs, dh13_N2F, dh8 = _mlp_bwd_dh(d8, ds, h13_N2F, hs13, (w13_8, s13, w2_8, s2, c2), dtype, True, True,
                                          True, fp8_da)
  if handoff:   # unscaled, with its row scales as hs's cotangent: h's norm adds it in
    dh, dhs_out = dh_ND.astype(h_like.dtype).reshape(x_out.shape), dhs
  else:   # the MLP's share of h's gradient, under the caller's dh_mul convention (see the docstring)
    dh = (dh_ND.astype(jnp.float32) * (dhs / dh_mul_in)[:, None]).astype(h_like.dtype).reshape(x_out.shape)
    dhs_out = None
  if static_h:   # W2's as _mlp_bwd_w makes it; W13's from h's static copy
    dw2 = wgrad_kernels(d_y.reshape(-1, D), ds, *act_NF, _ONE).T
    dw13 = wgrad_static_h(*h_from, dh8, dhs, s13)
  else:   # h, or the stream and (rstd, gain) that W13's weight gradient remakes h from
    dw13, dw2 = _mlp_bwd_w(d_y, ds, act_NF, (src, None if h_from is None else (*h_from, dtype)), hs, dh13_N2F, dh8,
                           dhs, s13, True, True, True)
  zero = lambda a: None if a is None else jnp.zeros_like(a)   # pylint: disable=unnecessary-lambda-assignment
  return (d_s, d_y, dh, None, dhs_out, jax.tree.map(zero, h_from), dw13.reshape(D, 2, F).astype(w13_like.dtype),
          dw2.astype(w2_like.dtype), dg_next, zero(q_next), zero(q_rows), None if w8_mark is None else (None,) * 8)


parallel_sublayer.defvjp(_par_fwd, _par_bwd)


def wgrad_static_h(h8_DN, qh, dh8_NE, dhs_N, s):
  """h^T dH in fp32 [D, E] from h's static e4m3 copy token-last, h8 = e4m3(h qh) (the one x Wqkv's
  weight gradient reads: attention_kernel's h8_DN), and dH = dh8 * dhs[token] / s (dhs: dh8's row
  scales times s, as the SwiGLU backward writes them; s = W13's weight scale). The row scales move
  into dH's own token-last copy, e4m3(dh8 * dhs * Q) with one Q = 1 / max(dhs) for the tensor (every
  row of dh8 peaks at ~448), so dH is rounded to e4m3 twice and h's copy needs no pass of its own
  (wgrad_kernels rounds dH once and makes h's copy scaled by the rows). GPU (Triton)."""
  import swiglu_kernel  # pylint: disable=import-outside-toplevel
  q = 1.0 / jnp.maximum(jnp.max(dhs_N), 1e-30)
  dh_EN = swiglu_kernel.transpose_fp8(dh8_NE, dhs_N, q.reshape(1))
  # (An all-zero W13 has s = 0 and dhs = 0: the copy and the dot are 0, and so is the gradient.)
  return dot8(h8_DN, dh_EN, 1, out=jnp.float32) / jnp.maximum(qh.reshape(()) * q * s.reshape(()), 1e-30)


def wgrad_kernels(h_ND, hs_N, dh8_NE, dhs_N, s, norm=None):
  """wgrad_fp8's arithmetic from the fused path's kernels (GPU): h [N, D] bf16 with its row scales
  hs = s max|h[t]| / 448, and dH's e4m3 copy with its row scales dhs = s r, s the factor both
  carry. W13's: h and dH13 from the norm kernel and the SwiGLU backward, s = W13's weight scale,
  zero only where the gradient is too; W2's: dY and act from the norm backward and the SwiGLU
  forward, s = 1 (W2's weight scale is zero for a zero W2, whose gradient is not). So Q = s^2 /
  max(hs dhs), and qmul = Q / s gives h * dhs * qmul = h * r * Q; swiglu_kernel.transpose_fp8
  makes both token-last copies. norm = (rstd, gain, dtype): h_ND is the residual stream that h is
  the RMSNorm of, and h is remade from it (transpose_fp8's norm=)."""
  import swiglu_kernel  # pylint: disable=import-outside-toplevel
  qmul = s / jnp.maximum(jnp.max(hs_N * dhs_N), 1e-30)
  h8_DN = swiglu_kernel.transpose_fp8(h_ND, dhs_N, qmul, norm=norm)
  # (The floor: an all-zero W13 has s = 0, so qmul = 0 too, and the dot is 0.)
  return dot8(h8_DN, swiglu_kernel.transpose_fp8(dh8_NE), 1, out=jnp.float32) / jnp.maximum(qmul * s, 1e-30)
