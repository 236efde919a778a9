"""The SwiGLU MLP with three of its six matmuls in FP8 (model.py's mlp_fp8=True).

x W13 in the forward and both input gradients, dY W2^T and dH13 W13^T, take e4m3 operands on
cuBLASLt's FP8 path (fp32 accumulation, bf16 out). Activations and gradients get one scale per
row (the token: a row's scale factors out of every dot it enters, so it is applied to the dot's
output), weights one per tensor, each from the current values (no scale history to carry). The
other three stay bf16: the weight gradients (FP8 in that layout ran 6x slower, docs/model.md) and
a W2, whose e4m3 operand would cost a pass that the dot does not repay.

Two implementations of the same arithmetic:
- `mlp_sublayer` (GPU, norm_backend='triton'): residual add + RMSNorm -> MLP -> residual add +
  the next RMSNorm as one custom VJP, so each quantization rides in a Triton kernel that already
  reads or writes that tensor (the norm kernels and the SwiGLU backward) and each per-row scale
  is applied where the dot's output is next read.
- `swiglu` (anywhere): plain XLA, the reference the kernels are tested against.
"""
import functools

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn
F8_MAX = 448.0   # the largest finite e4m3fn value


def quantize_rows(x):
  """x [..., K] -> (e4m3 of x * q, 1 / q as fp32 [...]) with q = 448 / max|row| (0 rows stay 0)."""
  x = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x), -1)
  q = F8_MAX / jnp.maximum(amax, 1e-30)
  return jnp.clip(x * q[..., None], -F8_MAX, F8_MAX).astype(E4M3), amax / F8_MAX


def quantize_tensor(w):
  """w -> (e4m3 of w * q, 1 / q as a 1-element fp32 array) with q = 448 / max|w|."""
  w = w.astype(jnp.float32)
  amax = jnp.max(jnp.abs(w))
  q = F8_MAX / jnp.maximum(amax, 1e-30)
  return jnp.clip(w * q, -F8_MAX, F8_MAX).astype(E4M3), (amax / F8_MAX).reshape(1)


def dot8(a8_NK, b8, b_contract):
  """a8 [N, K] . b8 (its axis b_contract is K), both e4m3: unscaled, bf16 out (fp32 accumulation)."""
  return jax.lax.dot_general(a8_NK, b8, (((1,), (b_contract,)), ((), ())), preferred_element_type=jnp.bfloat16)


def silu_mul_scaled(h13_N2F, scale_N, dtype):
  """silu(gate) * up of an FP8 dot's unscaled [gate | up] output whose rows are to be scaled by scale_N."""
  F = h13_N2F.shape[1] // 2
  h = h13_N2F.astype(jnp.float32) * scale_N[:, None]
  return (jax.nn.silu(h[:, :F]) * h[:, F:]).astype(dtype)


# ----------------------------------------------------------------------------- the XLA reference


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def swiglu(h_BTD, w13_D2F, w2_FD, dtype):
  """W2(SiLU(h W1) * (h W3)), w13 = [W1 | W3] as D x 2 x F (fp32 masters), with the module's FP8 dots;
  outputs in dtype."""
  return _ref_fwd(h_BTD, w13_D2F, w2_FD, dtype)[0]


def _ref_fwd(h_BTD, w13_D2F, w2_FD, dtype):
  B, T, D = h_BTD.shape
  h_ND = h_BTD.reshape(B * T, D).astype(dtype)
  h8, hs = quantize_rows(h_ND)
  w13_8, s13 = quantize_tensor(w13_D2F.reshape(D, -1))
  h13_N2F = dot8(h8, w13_8, 0)
  act_NF = silu_mul_scaled(h13_N2F, hs * s13, dtype)
  y_ND = jnp.dot(act_NF, w2_FD.astype(dtype))
  return y_ND.reshape(B, T, D), (h_ND, h13_N2F, hs * s13, act_NF, w13_8, s13, w13_D2F, w2_FD)


def _ref_bwd(dtype, res, dy_BTD):
  h_ND, h13_N2F, hs, act_NF, w13_8, s13, w13_D2F, w2_FD = res
  B, T, D = dy_BTD.shape
  dy_ND = dy_BTD.reshape(B * T, D).astype(dtype)
  w2_8, s2 = quantize_tensor(w2_FD)
  dy8, dys = quantize_rows(dy_ND)
  da_NF = dot8(dy8, w2_8, 1).astype(jnp.float32) * (dys * s2)[:, None]
  dw2 = jnp.dot(act_NF.T, dy_ND, preferred_element_type=jnp.float32)
  _, vjp = jax.vjp(lambda h: silu_mul_scaled(h, jnp.ones_like(hs), jnp.float32),
                   h13_N2F.astype(jnp.float32) * hs[:, None])
  dh13_N2F = vjp(da_NF)[0].astype(dtype)
  dh8, dhs = quantize_rows(dh13_N2F)
  dx_ND = (dot8(dh8, w13_8, 1).astype(jnp.float32) * (dhs * s13)[:, None]).astype(dtype)
  dw13 = jnp.dot(h_ND.T, dh13_N2F, preferred_element_type=jnp.float32)
  return (dx_ND.reshape(B, T, D), dw13.reshape(w13_D2F.shape).astype(w13_D2F.dtype), dw2.astype(w2_FD.dtype))


swiglu.defvjp(_ref_fwd, _ref_bwd)


# ----------------------------------------------------------------------------- the fused GPU path


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def mlp_sublayer(x_BTD, attn_BTD, g_mlp, w13_D2F, w2_FD, g_next, dtype):
  """(x', h') with s = x + attn, x' = s + MLP(RMSNorm(s) * g_mlp), h' = RMSNorm(x') * g_next: the
  values of norm_kernel.add_rms_norm -> swiglu -> add_rms_norm, with the MLP's FP8 dots."""
  return _fwd(x_BTD, attn_BTD, g_mlp, w13_D2F, w2_FD, g_next, dtype)[0]


def _fwd(x_BTD, attn_BTD, g_mlp, w13_D2F, w2_FD, g_next, dtype):
  import norm_kernel  # pylint: disable=import-outside-toplevel  (UserError without triton/GPU)
  B, T, D = x_BTD.shape
  w13_8, s13 = quantize_tensor(w13_D2F.reshape(D, -1))
  s_BTD, h_BTD, rstd1, (h8, hs) = norm_kernel.forward(x_BTD, attn_BTD, g_mlp, dtype, fp8_qmul=s13)
  h13_N2F = dot8(h8, w13_8.T, 1)   # cuBLASLt's FP8 dots want both operands K-major
  act_NF = silu_mul_scaled(h13_N2F, hs, dtype)
  y_BTD = jnp.dot(act_NF, w2_FD.astype(dtype)).reshape(B, T, D)
  x_out, h_next, rstd2, _ = norm_kernel.forward(s_BTD, y_BTD, g_next, dtype)
  res = (s_BTD, rstd1, h_BTD, h13_N2F, hs, act_NF, x_out, rstd2, w13_8, s13, w2_FD, g_mlp, g_next,
         jnp.zeros((0,), attn_BTD.dtype), jnp.zeros((0,), w13_D2F.dtype))
  return (x_out, h_next), res


def _bwd(dtype, res, cotangents):
  import norm_kernel  # pylint: disable=import-outside-toplevel
  import swiglu_kernel  # pylint: disable=import-outside-toplevel
  s_BTD, rstd1, h_BTD, h13_N2F, hs, act_NF, x_out, rstd2, w13_8, s13, w2_FD, g_mlp, g_next, attn_like, w13_like = res
  B, T, D = x_out.shape
  F = w2_FD.shape[0]
  w2_8, s2 = quantize_tensor(w2_FD)
  d_s, d_y, dg_next, (d8, ds) = norm_kernel.backward(*cotangents, x_out, rstd2, g_next, dtype, fp8_qmul=s2)
  da_NF = dot8(d8, w2_8, 1)
  dw2 = jnp.dot(act_NF.T, d_y.reshape(B * T, D), preferred_element_type=jnp.float32)
  dh13_N2F, dh8, dhs = swiglu_kernel.backward_fp8(h13_N2F, hs, da_NF, ds, s13)
  dw13 = jnp.dot(h_BTD.reshape(B * T, D).T, dh13_N2F, preferred_element_type=jnp.float32)
  dh_ND = dot8(dh8, w13_8, 1)
  dx, dattn, dg_mlp = norm_kernel.backward(d_s, dh_ND, s_BTD, rstd1, g_mlp, attn_like.dtype, dh_scale=dhs)
  return (dx, dattn, dg_mlp, dw13.reshape(D, 2, F).astype(w13_like.dtype), dw2.astype(w2_FD.dtype), dg_next)


mlp_sublayer.defvjp(_fwd, _bwd)
