"""SwiGLU's gate, silu(gate) * up, with its backward as one Triton kernel (model.py's swiglu_backend='triton').

`silu_mul(h13_BT2F)` takes the fused W1/W3 projection [B, T, 2, F] and returns silu(gate) * up
[B, T, F], the same values as model.swiglu's XLA expression (the forward IS that expression). The
backward is what changes: XLA's fusion for it reads the projection and the incoming gradient and
writes both gate gradients at ~2 TB/s on an H100/H200 (0.2 ms a layer at the speedrun shape); the
kernel does the same single pass over the same bytes (docs/model.md has the measurements).

`backward_fp8` and `forward_fp8` are fp8_mlp.py's variants: unscaled FP8-dot inputs with their
row scales, and an e4m3 copy of the result for the next FP8 dot; `transpose_fp8` writes the
token-last e4m3 operands of its weight gradients in e4m3 (mlp_fp8_wgrad, mlp_fp8_wgrad_w2).

triton and jax_triton are imported when the kernel is launched, so this module imports anywhere.
"""
import jax
import jax.numpy as jnp

import errors

BLOCK_R, BLOCK_F, NUM_WARPS = 32, 128, 8   # the best of 12 on the H200 (bench/dev_memory_kernels.py)


def _triton():
  return errors.triton_kernels("swiglu_kernel_triton", "swiglu_backend")


def _xla(h13_BT2F):
  return jax.nn.silu(h13_BT2F[..., 0, :]) * h13_BT2F[..., 1, :]


@jax.custom_vjp
def silu_mul(h13_BT2F):
  """silu(h13[..., 0, :]) * h13[..., 1, :] in h13's dtype; the backward is one Triton kernel."""
  return _xla(h13_BT2F)


def _fwd(h13_BT2F):
  _triton()   # fail at trace time, with the fix, rather than in the backward
  return _xla(h13_BT2F), h13_BT2F


def _bwd(h13_BT2F, da_BTF):
  jt, kern = _triton()
  F = h13_BT2F.shape[-1]
  N = h13_BT2F.size // (2 * F)
  dh13 = jt.triton_call(
      h13_BT2F.reshape(N, 2 * F), da_BTF.astype(h13_BT2F.dtype).reshape(N, F), kernel=kern.swiglu_bwd_kernel,
      out_shape=jax.ShapeDtypeStruct((N, 2 * F), h13_BT2F.dtype),
      grid=(-(-N // BLOCK_R), -(-F // BLOCK_F)), num_warps=NUM_WARPS, num_stages=1,
      N=N, F=F, BLOCK_R=BLOCK_R, BLOCK_F=BLOCK_F)
  return (dh13.reshape(h13_BT2F.shape),)


silu_mul.defvjp(_fwd, _bwd)


def _row_tiles(F):
  """The FP8 kernels' two tiles of a row: BLOCK_F, the largest power of two <= F, and BLOCK_T, the
  next power of two >= the rest (0 when there is none): 1024 + 512 lanes for F = 1344."""
  head = 1 << (F.bit_length() - 1)
  rest = F - head
  return dict(BLOCK_F=head, BLOCK_T=0 if rest == 0 else 1 << (rest - 1).bit_length())


# backward_fp8's rows per program and warps: 128.8 us at 32768 x 1344 on the H200, against
# 129.2-149.1 us for the other five swept (bench/results/h200_session17/). With a row as 2048
# padded lanes it was 141 us at (1, 8) (bench/results/fp8_mlp_h200/swiglu_fp8_sweep.json).
FP8_ROWS, FP8_WARPS = 1, 4


def _out_dtype(h13_N2F, dtype):
  """The 16-bit dtype the FP8 kernels round act / dH13 to: dtype, else h13's, except that an e4m3 h13
  (fp8_h13) means bf16, never e4m3 (an unscaled e4m3 rounding before the row-scaled copy would lose
  most of its precision)."""
  if dtype is not None:
    return dtype
  return jnp.bfloat16 if h13_N2F.dtype == jnp.float8_e4m3fn else h13_N2F.dtype


def backward_fp8(h13_N2F, hs_N, da_NF, das_N, qmul, write_dh13=True, dtype=None):
  """fp8_mlp.py's SwiGLU backward from FP8 dots' unscaled outputs: gate, up = h13 * hs[row] and
  dA = da * das[row]. Returns (dh13 [N, 2F] in _out_dtype, dh13 in e4m3 [N, 2F], its per-row scale
  times qmul [N]): a bf16 weight gradient's operand (None when write_dh13 is False: the e4m3 copy
  then feeds that gradient too) and the input gradient's FP8 operand. h13 may be e4m3 itself
  (fp8_mlp's fp8_h13); the gradients are still rounded to 16 bits first."""
  jt, kern = _triton()
  N, F = da_NF.shape
  dh13, dh8, dhs = jt.triton_call(
      h13_N2F, hs_N, da_NF, das_N, qmul, kernel=kern.swiglu_bwd_fp8_kernel,
      out_shape=(jax.ShapeDtypeStruct((N, 2 * F) if write_dh13 else (1,), _out_dtype(h13_N2F, dtype)),
                 jax.ShapeDtypeStruct((N, 2 * F), jnp.float8_e4m3fn), jax.ShapeDtypeStruct((N,), jnp.float32)),
      grid=(-(-N // FP8_ROWS),), num_warps=FP8_WARPS, num_stages=1, N=N, F=F, ROWS=FP8_ROWS,
      WRITE_DH13=bool(write_dh13), **_row_tiles(F))
  return (dh13 if write_dh13 else None), dh8, dhs


# transpose_fp8's tile (tokens x features), warps, and whether the transpose moves 32-bit values,
# for e4m3 bytes and for the scaled copy of a 16-bit array: the best of 18 each at the speedrun
# shape on the H200, dH13's [32768, 2688] 48.1 us (57.7 for 64 x 64 bytes), h's [32768, 512] 15.1
# us (17.5 for 32 x 64; bench/dev_fp8_wgrad.py --sweep, bench/results/h200_session20/call3/).
TRANSPOSE = {"bytes": (64, 128, 4, True), "scaled": (64, 64, 4, False)}


def transpose_fp8(x_NC, row_scale_N=None, qmul=None, norm=None):
  """[C, N] e4m3 from x [N, C], in one Triton pass: x's own bytes transposed (x in e4m3), or with
  row_scale and qmul (a 1-element fp32 array) e4m3(x * row_scale[row] * qmul) from any float x.
  The operands of an FP8 dot that sums over the N tokens (fp8_mlp.py's weight gradients). norm =
  (rstd [N], gain [C], dtype), with row_scale: x is a residual stream s and the copy is that of
  h = RMSNorm(s) * gain in dtype, remade from s and the rstd norm_kernel.forward saved, as that
  kernel computes it, so its forward need not write h (write_h=False)."""
  jt, kern = _triton()
  N, C = x_NC.shape
  scaled = row_scale_N is not None
  assert scaled or norm is None, "norm= needs row_scale_N and qmul"
  unread = jnp.zeros((1,), jnp.float32)   # the placeholder of each input the kernel's mode skips
  x8 = scaled and x_NC.dtype == jnp.float8_e4m3fn   # e4m3 in as its bytes (the kernel's X8)
  if scaled:
    src, out_dtype = jax.lax.bitcast_convert_type(x_NC, jnp.uint8) if x8 else x_NC, jnp.float8_e4m3fn
  else:
    src, out_dtype = jax.lax.bitcast_convert_type(x_NC, jnp.uint8), jnp.uint8
    row_scale_N = qmul = unread
  rstd, gain, h_like = (norm[0], norm[1], jnp.zeros((1,), norm[2])) if norm is not None else (unread,) * 3
  bn, bc, warps, wide = TRANSPOSE["scaled" if scaled else "bytes"]
  out = jt.triton_call(
      src, row_scale_N.astype(jnp.float32), jnp.asarray(qmul, jnp.float32).reshape(1), rstd, gain, h_like,
      kernel=kern.transpose_fp8_kernel, out_shape=jax.ShapeDtypeStruct((C, N), out_dtype),
      grid=(-(-N // bn), -(-C // bc)), num_warps=warps, num_stages=1, N=N, C=C, BLOCK_N=bn, BLOCK_C=bc,
      SCALED=scaled, WIDE=wide, NORMED=norm is not None, X8=x8)
  return out if scaled else jax.lax.bitcast_convert_type(out, x_NC.dtype)


# forward_fp8's rows per program and warps: 74.9 us at 32768 x 1344 on the H200, against 75.3-96.1
# us for the other seven swept (bench/results/h200_session17/; 82 us with the padded 2048-lane
# row, bench/results/h200_session15/); XLA's fusion that writes the bf16 act alone takes 70 us.
FWD_FP8_ROWS, FWD_FP8_WARPS = 1, 2


def forward_fp8(h13_N2F, hs_N, qmul, write_act=True, dtype=None):
  """fp8_mlp.py's gate with mlp_fp8_w2, from an FP8 dot's unscaled output: gate, up = h13 * hs[row].
  Returns (silu(gate) * up [N, F] in _out_dtype, the same in e4m3, its per-row scale times qmul [N]):
  a bf16 weight gradient's operand (None when write_act is False: W2's gradient then takes the
  e4m3 copy, mlp_fp8_wgrad_w2) and the forward dot's. h13 may be e4m3 itself (fp8_mlp's fp8_h13);
  act is still rounded to 16 bits before its e4m3 copy."""
  jt, kern = _triton()
  N, F = h13_N2F.shape[0], h13_N2F.shape[1] // 2
  act, a8, as_ = jt.triton_call(
      h13_N2F, hs_N, qmul, kernel=kern.swiglu_fwd_fp8_kernel,
      out_shape=(jax.ShapeDtypeStruct((N, F) if write_act else (1,), _out_dtype(h13_N2F, dtype)),
                 jax.ShapeDtypeStruct((N, F), jnp.float8_e4m3fn), jax.ShapeDtypeStruct((N,), jnp.float32)),
      grid=(-(-N // FWD_FP8_ROWS),), num_warps=FWD_FP8_WARPS, num_stages=1, N=N, F=F, ROWS=FWD_FP8_ROWS,
      WRITE_ACT=bool(write_act), **_row_tiles(F))
  return (act if write_act else None), a8, as_
