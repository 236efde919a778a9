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
