"""SwiGLU's gate, silu(gate) * up, with its backward as one Triton kernel (model.py's swiglu_backend='triton').

`silu_mul(h13_BT2F)` takes the fused W1/W3 projection [B, T, 2, F] and returns silu(gate) * up
[B, T, F], the same values as model.swiglu's XLA expression (the forward IS that expression). The
backward is what changes: XLA's fusion for it reads the projection and the incoming gradient and
writes both gate gradients at ~2 TB/s on an H100/H200 (0.2 ms a layer at the speedrun shape); the
kernel does the same single pass over the same bytes (docs/model.md has the measurements).

triton and jax_triton are imported when the kernel is launched, so this module imports anywhere.
"""
import jax
import jax.numpy as jnp

import errors

BLOCK_R, BLOCK_F, NUM_WARPS = 32, 128, 8   # the best of 12 on the H200 (bench/dev_memory_kernels.py)
# The fused projections (mlp): (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages), BLOCK_N
# columns of each half per program.
UP = (128, 64, 64, 8, 8, 3)
DOWN_BWD = (128, 64, 64, 8, 4, 3)


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


def _matmul_call(kernel, cfg, a_ND, b, h13_N2F, outs, F):
  jt, kern = _triton()
  bm, bn, bk, gm, warps, stages = cfg
  N, D = a_ND.shape
  return jt.triton_call(a_ND, b, *h13_N2F, kernel=getattr(kern, kernel), out_shape=outs,
                        grid=(-(-N // bm) * -(-F // bn),), num_warps=warps, num_stages=stages,
                        N=N, D=D, F=F, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm)


def _up(h_ND, w13_D2F):
  N, F = h_ND.shape[0], w13_D2F.shape[-1]
  return _matmul_call("swiglu_up_kernel", UP, h_ND, w13_D2F, (),
                      (jax.ShapeDtypeStruct((N, 2, F), h_ND.dtype), jax.ShapeDtypeStruct((N, F), h_ND.dtype)), F)


@jax.custom_vjp
def mlp(h_BTD, w13_D2F, w2_FD):
  """(silu(h W1) * h W3) W2 with W1, W3 fused in w13 [D, 2, F], all operands in one dtype: model.swiglu.
  The first projection writes the activation from its epilogue (swiglu_up_kernel); in the backward
  the activation's gradient goes straight into both gate gradients (swiglu_down_bwd_kernel). The
  three other matmuls are XLA's (cuBLAS)."""
  return _mlp_fwd(h_BTD, w13_D2F, w2_FD)[0]


def _mlp_fwd(h_BTD, w13_D2F, w2_FD):
  B, T, D = h_BTD.shape
  h13_N2F, act_NF = _up(h_BTD.reshape(B * T, D), w13_D2F)
  y_BTD = jnp.einsum("nf,fd->nd", act_NF, w2_FD).reshape(B, T, D)
  return y_BTD, (h_BTD, w13_D2F, w2_FD, h13_N2F, act_NF)


def _mlp_bwd(res, dy_BTD):
  h_BTD, w13_D2F, w2_FD, h13_N2F, act_NF = res
  B, T, D = h_BTD.shape
  N, F = B * T, w2_FD.shape[0]
  dy_ND = dy_BTD.reshape(N, D).astype(h13_N2F.dtype)
  dh13_N2F = _matmul_call("swiglu_down_bwd_kernel", DOWN_BWD, dy_ND, w2_FD, (h13_N2F,),
                          jax.ShapeDtypeStruct((N, 2, F), h13_N2F.dtype), F)
  h_ND = h_BTD.reshape(N, D)
  dh_BTD = jnp.einsum("nsf,dsf->nd", dh13_N2F, w13_D2F).reshape(B, T, D)
  dw13 = jnp.einsum("nd,nsf->dsf", h_ND, dh13_N2F)
  dw2 = jnp.einsum("nf,nd->fd", act_NF, dy_ND)
  return dh_BTD, dw13, dw2


mlp.defvjp(_mlp_fwd, _mlp_bwd)
