"""EXPERIMENT (first version, kept in history for the loss A/B it produced): the SwiGLU MLP with
its forward and input-gradient matmuls in FP8 (model.py's mlp_fp8=True), quantized by XLA.

Four of the MLP's six matmuls take e4m3 operands on cuBLASLt's FP8 path: x W13 and a W2 in the
forward, dY W2^T and dH13 W13^T in the backward. Activations and gradients get one scale per row
(the token: a row's scale factors out of every dot it enters), weights one per tensor, each from
the current values (no scale history to carry). The weight gradients stay bf16 x bf16: in that
layout FP8 ran 6x slower (docs/model.md). Accumulation is fp32 inside cuBLAS; outputs are bf16.
LM_FP8_MLP_BWD=0 keeps the two backward dots in bf16 (the forward-only variant of the A/B).
"""
import functools
import os

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn
F8_MAX = 448.0   # the largest finite e4m3fn value


def quantize_rows(x):
  """x [..., K] -> (e4m3 of x * s, 1 / s as fp32 [..., 1]) with s = 448 / max|row| (0 rows stay 0)."""
  x = x.astype(jnp.float32)
  s = F8_MAX / jnp.maximum(jnp.max(jnp.abs(x), -1, keepdims=True), 1e-30)
  return jnp.clip(x * s, -F8_MAX, F8_MAX).astype(E4M3), 1.0 / s


def quantize_tensor(w):
  """w -> (e4m3 of w * s, 1 / s as an fp32 scalar) with s = 448 / max|w|."""
  w = w.astype(jnp.float32)
  s = F8_MAX / jnp.maximum(jnp.max(jnp.abs(w)), 1e-30)
  return jnp.clip(w * s, -F8_MAX, F8_MAX).astype(E4M3), 1.0 / s


def _dot8(a8, b8, b_contract, scale, dtype):
  """(a8 . b8 contracting a8's last axis with b8's axis b_contract) * scale, in dtype."""
  out = jax.lax.dot_general(a8, b8, (((a8.ndim - 1,), (b_contract,)), ((), ())),
                            preferred_element_type=jnp.bfloat16)
  return (out.astype(jnp.float32) * scale).astype(dtype)


def _silu_mul(h13_N2F, F):
  return jax.nn.silu(h13_N2F[:, :F]) * h13_N2F[:, F:]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def swiglu_fp8(h_BTD, w13_D2F, w2_FD, backend="xla"):
  """W2(SiLU(h W1) * (h W3)) with w13 = [W1 | W3] as D x 2 x F, the dots as the module says; h's
  dtype (bf16) for the outputs. backend 'triton' runs SwiGLU's backward as swiglu_kernel.py's kernel."""
  return _fwd(h_BTD, w13_D2F, w2_FD, backend)[0]


def _fwd(h_BTD, w13_D2F, w2_FD, backend):
  B, T, D = h_BTD.shape
  F = w2_FD.shape[0]
  dtype = h_BTD.dtype
  x_ND = h_BTD.reshape(B * T, D)
  x8, sx = quantize_rows(x_ND)
  w13_8, s13 = quantize_tensor(w13_D2F.reshape(D, 2 * F))
  h13_N2F = _dot8(x8, w13_8, 0, sx * s13, dtype)
  act_NF = _silu_mul(h13_N2F, F)
  a8, sa = quantize_rows(act_NF)
  w2_8, s2 = quantize_tensor(w2_FD)
  y_ND = _dot8(a8, w2_8, 0, sa * s2, dtype)
  return y_ND.reshape(B, T, D), (x_ND, h13_N2F, act_NF, w13_8, s13, w2_8, s2, w13_D2F, w2_FD)


def _bwd(backend, res, dy_BTD):
  x_ND, h13_N2F, act_NF, w13_8, s13, w2_8, s2, w13_D2F, w2_FD = res
  B, T, D = dy_BTD.shape
  F = w2_FD.shape[0]
  dtype = x_ND.dtype
  dy_ND = dy_BTD.reshape(B * T, D).astype(dtype)
  bwd8 = os.environ.get("LM_FP8_MLP_BWD", "1") == "1"   # EXPERIMENT knob: 0 = bf16 input-gradient dots
  if bwd8:
    dy8, sdy = quantize_rows(dy_ND)
    dact_NF = _dot8(dy8, w2_8, 1, sdy * s2, dtype)
  else:
    dact_NF = jnp.dot(dy_ND, w2_FD.astype(dtype).T)
  dw2 = jnp.dot(act_NF.T, dy_ND, preferred_element_type=jnp.float32)
  if backend == "triton":
    import swiglu_kernel  # pylint: disable=import-outside-toplevel  (UserError without triton/GPU)
    _, vjp = jax.vjp(swiglu_kernel.silu_mul, h13_N2F.reshape(B * T, 2, F))
    dh13_N2F = vjp(dact_NF)[0].reshape(B * T, 2 * F)
  else:
    _, vjp = jax.vjp(lambda h: _silu_mul(h, F), h13_N2F)
    dh13_N2F, = vjp(dact_NF)
  if bwd8:
    dh8, sdh = quantize_rows(dh13_N2F)
    dx_ND = _dot8(dh8, w13_8, 1, sdh * s13, dtype)
  else:
    dx_ND = jnp.dot(dh13_N2F, w13_D2F.reshape(D, 2 * F).astype(dtype).T)
  dw13 = jnp.dot(x_ND.T, dh13_N2F, preferred_element_type=jnp.float32)
  return (dx_ND.reshape(B, T, D), dw13.reshape(w13_D2F.shape).astype(w13_D2F.dtype),
          dw2.astype(w2_FD.dtype))


swiglu_fp8.defvjp(_fwd, _bwd)
