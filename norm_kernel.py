"""Residual add + RMSNorm fused into one Triton kernel each way (model.py's norm_backend='triton').

`add_rms_norm(x, y, gain, dtype)` returns (x + y, RMSNorm(x + y) * gain): the residual stream after
a sublayer and the next sublayer's normalized input, the same values as model.py's _residual_add
followed by rms_norm. In XLA that pair is several passes over the B x T x D stream (the add, the
sum of squares, the scaling; the backward three or four more); here the forward reads x and y
once and writes the sum and the normalized copy, and the backward reads the two cotangents and
the saved sum once and writes the one gradient that x and y share (twice only when their dtypes
differ), on a persistent grid that sums the gain gradient in registers. docs/model.md has the
measurements.

triton and jax_triton are imported when a kernel is launched, so this module imports anywhere.
"""
import functools

import jax
import jax.numpy as jnp

import errors

NORM_EPS = 1e-5   # model.NORM_EPS (not imported: model imports this module)
MAX_ROWS = 8      # rows per program at D <= 512 (the speedrun's shape, measured)
TILE = 4096       # values per tensor per program: wider rows get fewer rows (registers, not DRAM, bound it)
FWD_WARPS = 4
# The backward's persistent grid: BWD_ROWS rows a loop step, BWD_PROGRAMS_PER_SM programs per
# multiprocessor; the best of the 15 swept on the H200 (bench/dev_memory_kernels.py).
BWD_ROWS, BWD_WARPS, BWD_PROGRAMS_PER_SM = 8, 4, 2


def _triton():
  return errors.triton_kernels("norm_kernel_triton", "norm_backend")


def _consts(D):
  block_d = 1 << max(0, D - 1).bit_length()
  return dict(D=D, BLOCK_D=block_d, ROWS=max(1, min(MAX_ROWS, TILE // block_d)))


def _fwd(x_BTD, y_BTD, gain_D, dtype):
  jt, kern = _triton()
  D = x_BTD.shape[-1]
  N = x_BTD.size // D
  consts = _consts(D)
  x_out, h, rstd = jt.triton_call(
      x_BTD.reshape(N, D), y_BTD.reshape(N, D), gain_D, kernel=kern.add_norm_fwd_kernel,
      out_shape=(jax.ShapeDtypeStruct((N, D), x_BTD.dtype), jax.ShapeDtypeStruct((N, D), dtype),
                 jax.ShapeDtypeStruct((N,), jnp.float32)),
      grid=(-(-N // consts["ROWS"]),), num_warps=FWD_WARPS, num_stages=1, N=N, EPS=NORM_EPS, **consts)
  x_out = x_out.reshape(x_BTD.shape)
  return (x_out, h.reshape(x_BTD.shape)), (x_out, rstd, gain_D, jnp.zeros((0,), y_BTD.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def add_rms_norm(x_BTD, y_BTD, gain_D, dtype):
  """(x + y in x's dtype, RMSNorm(x + y) * gain in `dtype`), eps 1e-5, statistics in fp32."""
  return _fwd(x_BTD, y_BTD, gain_D, dtype)[0]


def _sm_count():
  """Multiprocessors of the GPU (132 on an H100/H200 SXM): the persistent backward's grid."""
  return int(getattr(jax.devices()[0], "core_count", 0) or 132)


def _bwd(dtype, res, cotangents):  # pylint: disable=unused-argument
  jt, kern = _triton()
  x_out, rstd, gain_D, y_like = res
  dx_out, dh = cotangents
  D = x_out.shape[-1]
  N = x_out.size // D
  consts = _consts(D)
  consts["ROWS"] = max(1, min(BWD_ROWS, TILE // consts["BLOCK_D"]))
  programs = max(1, min(-(-N // consts["ROWS"]), BWD_PROGRAMS_PER_SM * _sm_count()))
  # The residual add hands one gradient to both of its inputs: with one dtype (the bf16 stream) it
  # is written once and returned twice; DY is then a 1-element dummy the kernel never writes.
  two = x_out.dtype != y_like.dtype
  dx, dy, dg_part = jt.triton_call(
      dx_out.reshape(N, D), dh.reshape(N, D), x_out.reshape(N, D), rstd, gain_D, kernel=kern.add_norm_bwd_kernel,
      out_shape=(jax.ShapeDtypeStruct((N, D), x_out.dtype), jax.ShapeDtypeStruct((N, D) if two else (1,), y_like.dtype),
                 jax.ShapeDtypeStruct((programs, D), jnp.float32)),
      grid=(programs,), num_warps=BWD_WARPS, num_stages=1, N=N, PROGRAMS=programs, TWO_OUT=two, **consts)
  dx = dx.reshape(x_out.shape)
  return dx, dy.reshape(x_out.shape) if two else dx, jnp.sum(dg_part, 0).astype(gain_D.dtype)


def _fwd_rule(x_BTD, y_BTD, gain_D, dtype):
  return _fwd(x_BTD, y_BTD, gain_D, dtype)


add_rms_norm.defvjp(_fwd_rule, _bwd)
