"""Flash attention (FlashAttention-2, forward and backward) in Triton, called from JAX via jax-triton.

`flash_attention(q_BTHK, k_BTHK, v_BTHK)` is the `triton` attention backend of model.py. It is a
jax.custom_vjp over three Triton kernels (attention_kernel_triton.py): the forward saves only O
and the log-sum-exp per row; the backward computes dQ (one program per query block; it also makes
delta = rowsum(dO * O) from the rows it loads) and then dK/dV (one program per key block),
recomputing the probabilities block by block, so no T x T matrix ever reaches global memory. The
kernels read the model's [B, T, H, K] layout through strides: no transposes around them.

triton and jax_triton are imported only when a kernel is launched, so this module imports on a
machine without a GPU; `available()` says whether the kernels can run here. How the kernels work
and why the block table is what it is: docs/attention.md.
"""
import functools
import math

import jax
import jax.numpy as jnp

from errors import UserError

HEAD_DIMS = (16, 32, 64, 128)  # the kernels' tile widths; the whole head is one tile
DTYPES = (jnp.bfloat16, jnp.float16)

# Block sizes per head dim, from the H100 sweep of bench/tune_attention.py at the benchmark shapes
# (causal, bf16; results and reasoning in docs/attention.md). (BLOCK_M, BLOCK_N, num_warps, stages):
# fwd: M = queries per program, N = keys per loop step (M % N == 0 so causal blocks align).
# dkdv: N = keys per program, M = queries per loop step (N % M == 0).
# dq: M = queries per program, N = keys per loop step (M % N == 0).
# Head dim 16 was not swept; it uses the head dim 32 row.
_FWD = {16: (64, 32, 4, 3), 32: (64, 32, 4, 3), 64: (64, 64, 4, 3), 128: (128, 128, 8, 3)}
_DKDV = {16: (32, 64, 4, 3), 32: (32, 64, 4, 3), 64: (64, 64, 4, 3), 128: (64, 128, 8, 3)}
_DQ = {16: (64, 32, 4, 4), 32: (64, 32, 4, 4), 64: (64, 64, 4, 3), 128: (128, 64, 8, 3)}


def _clamp(block, seq_len):
  """Shrinks a block to the sequence (short T) but not below 16, the smallest tl.dot tile."""
  return max(16, min(block, 1 << max(0, seq_len - 1).bit_length()))


def block_config(seq_len, head_dim):
  """((fwd), (dkdv), (dq)) configs, each (BLOCK_M, BLOCK_N, num_warps, num_stages)."""
  return tuple((_clamp(m, seq_len), _clamp(n, seq_len), w, s)
               for m, n, w, s in (_FWD[head_dim], _DKDV[head_dim], _DQ[head_dim]))


def available():
  """True when the kernels can run here: triton and jax_triton import and JAX sees a GPU."""
  try:
    import jax_triton  # pylint: disable=import-outside-toplevel,unused-import
    import triton  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return jax.default_backend() == "gpu"


def _triton():
  """The lazily imported jax_triton and kernel modules, or a UserError that says what to do."""
  try:
    import triton_ffi  # pylint: disable=import-outside-toplevel
    jax_triton = triton_ffi.load()
    import attention_kernel_triton  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(
        f"the triton attention backend needs triton and jax-triton ({e}); on an NVIDIA GPU run the "
        "GPU install line in docs/attention.md, or use attention_backend='cudnn' or 'xla'") from e
  if jax.default_backend() != "gpu":
    raise UserError(f"the triton attention backend needs an NVIDIA GPU, but JAX runs on "
                    f"'{jax.default_backend()}'; use attention_backend='xla' on this machine")
  return jax_triton, attention_kernel_triton


def _check(q_BTHK, k_BTHK, v_BTHK):
  if q_BTHK.ndim != 4 or q_BTHK.shape != k_BTHK.shape or q_BTHK.shape != v_BTHK.shape:
    raise UserError(f"flash_attention wants q, k, v of one shape [batch, seq, heads, head_dim]; got "
                    f"{q_BTHK.shape}, {k_BTHK.shape}, {v_BTHK.shape}: repeat shared k/v heads first")
  if not q_BTHK.dtype == k_BTHK.dtype == v_BTHK.dtype or q_BTHK.dtype not in DTYPES:
    raise UserError(f"flash_attention wants bfloat16 or float16 q, k, v of one dtype; got "
                    f"{q_BTHK.dtype}, {k_BTHK.dtype}, {v_BTHK.dtype}: set compute_dtype='bfloat16' "
                    "or use attention_backend='xla' for float32")
  b, t, h, d = q_BTHK.shape
  if d > HEAD_DIMS[-1]:
    raise UserError(f"flash_attention supports head_dim <= {HEAD_DIMS[-1]}, got {d}: use more heads "
                    "(d_model / n_heads <= 128), or attention_backend='cudnn' or 'xla'")
  if b * h > 65535 or t == 0:  # grid axis 1 is B*H; CUDA caps it at 65535
    raise UserError(f"flash_attention needs 0 < seq and batch*heads <= 65535, got shape {q_BTHK.shape}: "
                    "split the batch into smaller calls")


def _forward(q_BTHK, k_BTHK, v_BTHK, causal, sm_scale, config, packed_v=False):
  """O and LSE; with packed_v, v_BTHK is the whole [B, T, 3, H, K] projection and V is its third part."""
  jt, kern = _triton()
  b, t, h, d = q_BTHK.shape
  bm, bn, warps, stages = config[0]
  o_BTHK, lse_BHT = jt.triton_call(
      q_BTHK, k_BTHK, v_BTHK, kernel=kern.fwd_kernel,
      out_shape=(jax.ShapeDtypeStruct(q_BTHK.shape, q_BTHK.dtype),
                 jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
      grid=(-(-t // bm), b * h), num_warps=warps, num_stages=stages,
      SM_SCALE=sm_scale, T=t, H=h, D=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal,
      V_ROW=(3 if packed_v else 1) * h * d, V_OFF=2 * h * d if packed_v else 0)
  return o_BTHK, lse_BHT


def _backward(q_BTHK, k_BTHK, v_BTHK, o_BTHK, lse_BHT, do_BTHK, causal, sm_scale, config):
  jt, kern = _triton()
  b, t, h, d = q_BTHK.shape
  shape = dict(T=t, H=h, D=d)
  like_q = jax.ShapeDtypeStruct(q_BTHK.shape, q_BTHK.dtype)
  like_lse = jax.ShapeDtypeStruct((b, h, t), jnp.float32)
  # dQ first: its kernel also makes delta = rowsum(O * dO), which the dK/dV kernel needs.
  bm, bn, warps, stages = config[2]
  delta_BHT, dq_BTHK = jt.triton_call(
      q_BTHK, k_BTHK, v_BTHK, o_BTHK, do_BTHK, lse_BHT, kernel=kern.bwd_dq_kernel,
      out_shape=(like_lse, like_q), grid=(-(-t // bm), b * h), num_warps=warps, num_stages=stages,
      SM_SCALE=sm_scale, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, **shape)
  bm, bn, warps, stages = config[1]
  dk_BTHK, dv_BTHK = jt.triton_call(
      q_BTHK, k_BTHK, v_BTHK, do_BTHK, lse_BHT, delta_BHT, kernel=kern.bwd_dkdv_kernel,
      out_shape=(like_q, like_q), grid=(-(-t // bn), b * h), num_warps=warps, num_stages=stages,
      SM_SCALE=sm_scale, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, **shape)
  return dq_BTHK, dk_BTHK, dv_BTHK


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash(q_BTHK, k_BTHK, v_BTHK, causal, sm_scale, config):
  return _forward(q_BTHK, k_BTHK, v_BTHK, causal, sm_scale, config)[0]


def _flash_fwd(q_BTHK, k_BTHK, v_BTHK, causal, sm_scale, config):
  o_BTHK, lse_BHT = _forward(q_BTHK, k_BTHK, v_BTHK, causal, sm_scale, config)
  return o_BTHK, (q_BTHK, k_BTHK, v_BTHK, o_BTHK, lse_BHT)


def _flash_bwd(causal, sm_scale, config, res, do_BTHK):
  q_BTHK, k_BTHK, v_BTHK, o_BTHK, lse_BHT = res
  return _backward(q_BTHK, k_BTHK, v_BTHK, o_BTHK, lse_BHT, do_BTHK.astype(q_BTHK.dtype),
                   causal, sm_scale, config)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BTHK, k_BTHK, v_BTHK, causal=True, sm_scale=None, *, config=None):
  """softmax(q k^T * sm_scale [causal mask]) v, per head; B x T x H x K in, B x T x H x K out.

  q, k, v: bfloat16 or float16, one shape, head_dim <= 128, any T >= 1. sm_scale defaults
  to 1/sqrt(head_dim). Differentiable (custom_vjp), works under jit. `config` overrides
  block_config(T, head_dim) (used by the tuning script; leave it None).
  """
  _check(q_BTHK, k_BTHK, v_BTHK)
  t, d = q_BTHK.shape[1], q_BTHK.shape[3]
  sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
  # Other head dims (MLA's K + R = 96, say) run zero-padded to the next tile width: zero columns
  # change no score q.k and give zero output columns, which are cut off (gradients follow).
  width = next(w for w in HEAD_DIMS if w >= d)
  pad = ((0, 0), (0, 0), (0, 0), (0, width - d))
  if width != d:
    q_BTHK, k_BTHK, v_BTHK = (jnp.pad(x, pad) for x in (q_BTHK, k_BTHK, v_BTHK))
  config = block_config(t, width) if config is None else tuple(tuple(c) for c in config)
  o_BTHK = _flash(q_BTHK, k_BTHK, v_BTHK, bool(causal), sm_scale, config)
  return o_BTHK[..., :d] if width != d else o_BTHK


# ----------------------------------------------------------------------------- packed QKV + RoPE


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash_rope(qkv_BT3HK, cos_TK, sin_TK, causal, sm_scale, config):
  return _flash_rope_fwd(qkv_BT3HK, cos_TK, sin_TK, causal, sm_scale, config)[0]


# Tokens per program of rope_qk_kernel and its warps: the best of 6 on the H200 (bench/dev_memory_kernels.py).
ROPE_ROWS, ROPE_WARPS = 4, 8
def _rotated(qkv_BT3HK, cos_TK, sin_TK):
  """RoPE(q), RoPE(k) from the packed projection in one kernel (model.apply_rope's values)."""
  jt, kern = _triton()
  b, t, _, h, d = qkv_BT3HK.shape
  like = jax.ShapeDtypeStruct((b, t, h, d), qkv_BT3HK.dtype)
  return jt.triton_call(qkv_BT3HK, cos_TK, sin_TK, kernel=kern.rope_qk_kernel, out_shape=(like, like),
                        grid=(-(-b * t // ROPE_ROWS),), num_warps=ROPE_WARPS, num_stages=1,
                        N=b * t, T=t, H=h, D=d, ROWS=ROPE_ROWS, BLOCK=1 << max(0, h * d - 1).bit_length())


# q is rotated with k by rope_qk_kernel (67 MB read and 67 MB written a layer at the speedrun shape,
# 43-47 us on the H100), not inside the forward kernel: the forty-fifth session's ROPE_Q_IN_FWD
# (rope_k_kernel, then a forward that rotated and stored its own query tile) took 8 us a layer less
# in the kernels alone but not in the step (7.974 vs 7.953 ms, 3 interleaved rounds on an H100;
# forty-sixth session). bench/results/h100_session46/rope_q_in_fwd.patch puts it back.
def _flash_rope_fwd(qkv_BT3HK, cos_TK, sin_TK, causal, sm_scale, config):
  q_BTHK, k_BTHK = _rotated(qkv_BT3HK, cos_TK, sin_TK)
  o_BTHK, lse_BHT = _forward(q_BTHK, k_BTHK, qkv_BT3HK, causal, sm_scale, config, packed_v=True)
  return o_BTHK, (qkv_BT3HK, q_BTHK, k_BTHK, cos_TK, sin_TK, o_BTHK, lse_BHT)


def _flash_rope_bwd(causal, sm_scale, config, res, do_BTHK):
  jt, kern = _triton()
  qkv_BT3HK, q_BTHK, k_BTHK, cos_TK, sin_TK, o_BTHK, lse_BHT = res
  do_BTHK = do_BTHK.astype(q_BTHK.dtype)
  b, t, h, d = q_BTHK.shape
  consts = dict(T=t, H=h, D=d, SM_SCALE=sm_scale, CAUSAL=causal)
  like_qkv = jax.ShapeDtypeStruct(qkv_BT3HK.shape, qkv_BT3HK.dtype)
  # dQ (and delta = rowsum(O * dO)) first, into a fresh dQKV; dK, dV then fill the rest in place.
  bm, bn, warps, stages = config[2]
  delta_BHT, dqkv_BT3HK = jt.triton_call(
      q_BTHK, k_BTHK, qkv_BT3HK, o_BTHK, do_BTHK, lse_BHT, cos_TK, sin_TK, kernel=kern.bwd_dq_rope_kernel,
      out_shape=(jax.ShapeDtypeStruct((b, h, t), jnp.float32), like_qkv), grid=(-(-t // bm), b * h),
      num_warps=warps, num_stages=stages, BLOCK_M=bm, BLOCK_N=bn, **consts)
  ins = (q_BTHK, k_BTHK, qkv_BT3HK, do_BTHK, lse_BHT, delta_BHT, cos_TK, sin_TK, dqkv_BT3HK)
  bm, bn, warps, stages = config[1]
  dqkv_BT3HK = jt.triton_call(*ins, kernel=kern.bwd_dkdv_rope_kernel, out_shape=like_qkv,
                              input_output_aliases={len(ins) - 1: 0}, grid=(-(-t // bn), b * h),
                              num_warps=warps, num_stages=stages, BLOCK_M=bm, BLOCK_N=bn, **consts)
  return dqkv_BT3HK, jnp.zeros_like(cos_TK), jnp.zeros_like(sin_TK)


_flash_rope.defvjp(_flash_rope_fwd, _flash_rope_bwd)


def flash_attention_rope(qkv_BT3HK, cos_TK, sin_TK, causal=True, sm_scale=None):
  """flash_attention(rope(q), rope(k), v) from the packed q/k/v projection [B, T, 3, H, K].

  cos_TK, sin_TK: model.rope_tables(T, K, theta) (RoPE on adjacent pairs, as model.apply_rope).
  Same result as model.apply_rope + flash_attention, with less memory traffic around the kernels:
  V is read in place from the projection, and the backward applies RoPE's transpose to dQ and dK
  inside the kernels and writes one packed dQKV (docs/attention.md). bf16/fp16, K in HEAD_DIMS.
  """
  if qkv_BT3HK.ndim != 5 or qkv_BT3HK.shape[2] != 3:
    raise UserError(f"flash_attention_rope wants the packed projection [batch, seq, 3, heads, head_dim]; "
                    f"got {qkv_BT3HK.shape}")
  q_BTHK = qkv_BT3HK[:, :, 0]
  _check(q_BTHK, q_BTHK, q_BTHK)
  t, d = q_BTHK.shape[1], q_BTHK.shape[3]
  if d not in HEAD_DIMS:
    raise UserError(f"flash_attention_rope supports head_dim in {HEAD_DIMS}, got {d}; use flash_attention "
                    "on rotated q, k (it pads other widths)")
  if cos_TK.shape != (t, d // 2) or sin_TK.shape != (t, d // 2):
    raise UserError(f"flash_attention_rope wants cos/sin tables of shape {(t, d // 2)} "
                    f"(model.rope_tables(T, head_dim, theta)); got {cos_TK.shape}, {sin_TK.shape}")
  sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
  return _flash_rope(qkv_BT3HK, cos_TK.astype(jnp.float32), sin_TK.astype(jnp.float32), bool(causal), sm_scale,
                     block_config(t, d))


# ----------------------------------------------------------------------------- x Wqkv + attention, FP8 backward
# model.attn_fp8_dqkv: x Wqkv (fp8_mlp.qkv_dot's e4m3 forward) and flash_attention_rope as one
# custom VJP, so that the attention's backward kernels can hand x Wqkv's backward its cotangent dQKV
# as e5m2, in both layouts its two dots read (bwd_*_rope_fp8_kernel), and both dots run on cuBLASLt's
# FP8 path: dh = dQKV Wqkv^T and dWqkv = h^T dQKV, 67 + 72 us a layer in bf16 on the H100
# (docs/model.md, "Thirty-eighth session"). dQKV's bytes stay what the bf16 stores wrote.
#
# One scale for the whole tensor, known before the kernels run (a program holds one head's columns
# of a few tokens, so neither a token's nor the tensor's max is at hand): G = qh * 2^(DQKV_LOG2 +
# ceil(log2 N)). Why that is enough: the cotangent the kernels make is d = s dL/dqkv (s = sw / qh,
# the forward's scale), so d G = sw N 2^DQKV_LOG2 dL/dqkv; N dL/dqkv is the gradient of the summed
# (not averaged) token losses, and sw = max|Wqkv| / 448. Over 200 speedrun steps on the H100, four
# seeds, max|d| ran 8e-12 .. 9.5e-9 (forty-second session, bench/results/h100_session42/loss/), so
# max|d G| ran ~0.17 .. 200: e5m2 holds 57344 (the stores clip there) and keeps full precision down
# to 6e-5, ~2^12 below the smallest of those maxima. e5m2, not e4m3: its 2^30 of range is what lets a
# scale from no measurement hold (e4m3 has 2^17); both cost about the same in val loss (+0.008 +-
# 0.005 at 200 steps, four seeds, with the best-case scale: bench/dev_qkv_grad_sim.py).
#
# ceil(log2 N) keeps the dots' own correction 2^-(DQKV_LOG2 + ceil(log2 N)) a power of two and a
# constant, exact in any float format, and one cuBLASLt could apply as a scale of the GEMM.
DQKV_LOG2 = 15
# Where dh's 2^-k goes. 'output': a multiply on the dot's output, which the H100 runs as a pass of
# its own over dh (~26 us a layer, forty-third session: XLA's Triton GEMM fusion takes the multiply
# in, and with cuBLASLt chosen it is left behind). 'norm': dh leaves the dot without it and the
# norm kernel that made h multiplies it back as it reads dh (norm_kernel.backward's dh_mul), where
# model.py's fused path owns that norm (the caller's dh_raw); elsewhere 'output'. 'norm' is the
# default since the forty-fifth session: the B128 step 7.995 vs 8.134 ms on an H100 (two interleaved
# rounds, faster in both), with the same loss and gradients (GPU test). A third form, d8's
# dequantization scale for cuBLASLt ('operand'), gained nothing in the forty-third and forty-fifth
# sessions (8.167 ms in the same call) and was removed; commit 59950e7 has it.
DH_SCALE = "norm"
E5M2_MAX = 57344.0   # the largest finite e5m2 value (attention_kernel_triton.E5M2_MAX, the kernels' clip)


def _dqkv_log2(n):
  return DQKV_LOG2 + max(0, n - 1).bit_length()


def dh_raw_mul(n):
  """2^-k for N = n tokens: what flash_attention_qkv_fp8(dh_raw=True)'s h gradient must be multiplied
  by (a power of two, exact in any float format)."""
  return 2.0 ** -_dqkv_log2(n)


def _qkv_grads_fp8(d8_NE, d8_EN, h8_ND, qh, sw, w8_DE, h_dtype, w_dtype, h8_DN=None, dh_raw=False):
  """x Wqkv's gradients from e5m2 d8 = e5m2(d G) (both layouts): dh = d (w / s)^T, dw = h^T d / s.
  With w = w8 sw, h = h8 / qh, s = sw / qh, d = d8 / G: dh = d8 w8^T 2^-k and dw = h8^T d8 2^-k /
  (qh sw), k = _dqkv_log2(N). h8_DN: h8's token-last copy (made here by XLA when None). dh_raw:
  dh without its 2^-k (d8 w8^T), for the caller to apply."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  inv = 2.0 ** -_dqkv_log2(d8_NE.shape[0])
  if dh_raw:
    dh_ND = fp8_mlp.dot8(d8_NE, w8_DE, 1)
  else:
    dh_ND = fp8_mlp.dot8(d8_NE, w8_DE, 1) * inv
  h8_DN = h8_ND.T if h8_DN is None else h8_DN
  dw_DE = fp8_mlp.dot8(h8_DN, d8_EN, 1, out=jnp.float32) * (inv / (qh * sw))
  return dh_ND.astype(h_dtype), dw_DE.astype(w_dtype)


def _qkv_fp8_forward(h8_ND, qh, w8, cos_TK, sin_TK, shape):
  """The packed projection (unscaled e4m3 dot, [B, T, 3, H, K]), its scale s, and the RoPE tables
  times s (the dot's scale folded into the rotation, as model._mha does with attn_fp8)."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  w8_ED, sw = w8[0], w8[1]
  s = jax.lax.stop_gradient(sw / qh)
  return fp8_mlp.dot8(h8_ND, w8_ED, 1).reshape(shape), s, cos_TK * s, sin_TK * s


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11))
def _qkv_flash_fp8(h_ND, h8_ND, qh, w_DE, w8, cos_TK, sin_TK, h8_DN, shape, sm_scale, kernels, dh_raw):
  return _qkv_flash_fp8_fwd(h_ND, h8_ND, qh, w_DE, w8, cos_TK, sin_TK, h8_DN, shape, sm_scale, kernels)[0]


def _reference_attention(qkv_BT3HK, cos_TK, sin_TK):
  """The kernels' values by XLA (CPU tests): model.py's own RoPE and XLA attention (causal, softmax
  scale 1 / sqrt(K), as the op's) on the packed projection."""
  import model  # pylint: disable=import-outside-toplevel
  q, k = (model.apply_rope(qkv_BT3HK[:, :, i], cos_TK, sin_TK) for i in (0, 1))
  return model.attention(q, k, qkv_BT3HK[:, :, 2], "xla")


def _qkv_flash_fp8_fwd(h_ND, h8_ND, qh, w_DE, w8, cos_TK, sin_TK, h8_DN, shape, sm_scale, kernels, dh_raw=False):  # pylint: disable=unused-argument
  qkv, s, cos_s, sin_s = _qkv_fp8_forward(h8_ND, qh, w8, cos_TK, sin_TK, shape)
  if kernels:
    o_BTHK, res = _flash_rope_fwd(qkv, cos_s, sin_s, True, sm_scale, block_config(shape[1], shape[4]))
  else:
    o_BTHK, res = _reference_attention(qkv, cos_s, sin_s), (qkv, cos_s, sin_s)
  return (o_BTHK, s), (res, h8_ND, qh, w8[1], w8[2], jnp.zeros((0,), h_ND.dtype), jnp.zeros((0,), w_DE.dtype),
                       tuple(None for _ in w8), h8_DN)


def _dqkv8(res, do_BTHK, g, sm_scale, kernels):
  """e5m2(dQKV g) as [N, 3HK] and [3HK, N]: the attention's backward kernels, or XLA (CPU tests)."""
  if not kernels:
    qkv, cos_s, sin_s = res
    _, vjp = jax.vjp(lambda x: _reference_attention(x, cos_s, sin_s), qkv)
    d = vjp(do_BTHK.astype(qkv.dtype))[0].astype(jnp.float32).reshape(-1, qkv[0, 0].size)
    d8_NE = jnp.clip(d * g, -E5M2_MAX, E5M2_MAX).astype(jnp.float8_e5m2)
    return d8_NE, d8_NE.T
  jt, kern = _triton()
  qkv_BT3HK, q_BTHK, k_BTHK, cos_TK, sin_TK, o_BTHK, lse_BHT = res
  b, t, h, d = q_BTHK.shape
  consts = dict(T=t, H=h, D=d, SM_SCALE=sm_scale, CAUSAL=True)
  config = block_config(t, d)
  out = (jax.ShapeDtypeStruct(qkv_BT3HK.shape, jnp.float8_e5m2), jax.ShapeDtypeStruct((3 * h * d, b * t), jnp.float8_e5m2))
  bm, bn, warps, stages = config[2]
  delta_BHT, d8, d8t = jt.triton_call(
      q_BTHK, k_BTHK, qkv_BT3HK, o_BTHK, do_BTHK.astype(q_BTHK.dtype), lse_BHT, cos_TK, sin_TK, g,
      kernel=kern.bwd_dq_rope_fp8_kernel, out_shape=(jax.ShapeDtypeStruct((b, h, t), jnp.float32), *out),
      grid=(-(-t // bm), b * h), num_warps=warps, num_stages=stages, BLOCK_M=bm, BLOCK_N=bn, **consts)
  ins = (q_BTHK, k_BTHK, qkv_BT3HK, do_BTHK.astype(q_BTHK.dtype), lse_BHT, delta_BHT, cos_TK, sin_TK, g, d8, d8t)
  bm, bn, warps, stages = config[1]
  d8, d8t = jt.triton_call(*ins, kernel=kern.bwd_dkdv_rope_fp8_kernel, out_shape=out,
                           input_output_aliases={len(ins) - 2: 0, len(ins) - 1: 1}, grid=(-(-t // bn), b * h),
                           num_warps=warps, num_stages=stages, BLOCK_M=bm, BLOCK_N=bn, **consts)
  return d8.reshape(b * t, -1), d8t


def _qkv_flash_fp8_bwd(shape, sm_scale, kernels, dh_raw, saved, cotangents):
  res, h8_ND, qh, sw, w8_DE, h_like, w_like, w8_cot, h8_given = saved
  n = h8_ND.shape[0]
  g = (qh * 2.0 ** _dqkv_log2(n)).astype(jnp.float32).reshape(1)
  d8_NE, d8_EN = _dqkv8(res, cotangents[0], g, sm_scale, kernels)
  h8_DN = h8_given
  if kernels and h8_DN is None:   # h8's token-last copy by one Triton pass (XLA's e4m3 transposes cost more)
    import swiglu_kernel  # pylint: disable=import-outside-toplevel
    h8_DN = swiglu_kernel.transpose_fp8(h8_ND)
  dh_ND, dw_DE = _qkv_grads_fp8(d8_NE, d8_EN, h8_ND, qh, sw, w8_DE, h_like.dtype, w_like.dtype, h8_DN, dh_raw)
  cos_s, sin_s = res[3:5] if kernels else res[1:3]   # the tables are constants: zero cotangents
  return (dh_ND, jnp.zeros_like(h8_ND), jnp.zeros_like(qh), dw_DE, w8_cot, jnp.zeros_like(cos_s), jnp.zeros_like(sin_s),
          None if h8_given is None else jnp.zeros_like(h8_given))


_qkv_flash_fp8.defvjp(_qkv_flash_fp8_fwd, _qkv_flash_fp8_bwd)


def flash_attention_qkv_fp8(h_ND, h8_ND, qh, w_DE, n_heads, cos_TK, sin_TK, batch, w8=None, kernels=True,
                            dh_raw=False, h8_DN=None):
  """(o [B, T, H, K] times 1 / s, s [1]): causal flash_attention_rope(x Wqkv) with x Wqkv as
  fp8_mlp.qkv_dot computes it (e4m3 h8 = e4m3(h qh), e4m3 w, one scale each), s the dot's scale, left
  for the caller to fold into Wo (model._mha). Its backward hands x Wqkv's two dots dQKV in e5m2 from
  the attention's backward kernels (above). h_ND [N, D] (N = batch * T) only receives the gradient;
  w_DE [D, 3 H K]; w8 = fp8_mlp.qkv_weights(w_DE, fp8_dh=True) when the caller made it (for all
  layers at once). kernels=False: the same arithmetic by XLA (CPU tests; the reference). dh_raw:
  h_ND's gradient comes out 1 / dh_raw_mul(N) times too large, for a caller whose norm kernel that
  made h multiplies it back (DH_SCALE='norm'; model._hidden_fused_norms). h8_DN: h8's token-last
  copy for the weight gradient, when the caller made it (to share it with the parallel block's MLP,
  fp8_mlp.PARALLEL_W13_STATIC_H); else one Triton pass makes it in the backward."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  n, e = h_ND.shape[0], w_DE.shape[1]
  k = e // (3 * n_heads)
  if e != 3 * n_heads * k or k not in HEAD_DIMS or n % batch:
    raise UserError(f"flash_attention_qkv_fp8 wants w of [D, 3 * heads * head_dim] with head_dim in {HEAD_DIMS} "
                    f"and h of [batch * T, D]; got w {w_DE.shape}, {n_heads} heads, h {h_ND.shape}, batch {batch}")
  w8 = fp8_mlp.qkv_weights(w_DE, fp8_dh=True) if w8 is None else w8
  shape = (batch, n // batch, 3, n_heads, k)
  return _qkv_flash_fp8(h_ND, h8_ND, qh, w_DE, tuple(w8), cos_TK.astype(jnp.float32), sin_TK.astype(jnp.float32),
                        h8_DN, shape, 1.0 / math.sqrt(k), bool(kernels), bool(dh_raw))
