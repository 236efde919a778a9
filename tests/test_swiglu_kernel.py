"""Tests of swiglu_kernel.py (SwiGLU's backward as one Triton kernel) and its use in model.py.

GPU tests compare the kernel's gradient with jax.vjp of silu(gate) * up computed in fp32 from the
same bf16 inputs, and the model's loss and gradients with either swiglu_backend. On the CPU, the
kernel itself runs in Triton's interpreter against NumPy float64 (bench/dev_interpret_swiglu.py),
and the forward, which is plain XLA, must equal model.swiglu's expression exactly.
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import model
import swiglu_kernel
from errors import UserError


def _cfg(**kw):
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=300, context_length=32, d_model=64, n_layers=2, n_heads=4, d_ff=96,
                  compute_dtype="float32"))
  cfg.update(kw)
  return cfg


def test_forward_is_the_xla_expression_and_runs_anywhere():
  """Evaluation and sampling (no gradient) need no GPU: the forward values are XLA's, bit for bit."""
  h13 = (3 * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 2, 96))).astype(jnp.bfloat16)
  want = jax.nn.silu(h13[:, :, 0]) * h13[:, :, 1]
  np.testing.assert_array_equal(np.asarray(swiglu_kernel.silu_mul(h13), np.float32), np.asarray(want, np.float32))
  cfg = _cfg()
  params = model.init_params(jax.random.PRNGKey(1), cfg)
  tok = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 0, cfg.vocab_size)
  np.testing.assert_array_equal(np.asarray(model.forward(params, tok, _cfg(swiglu_backend="triton"))),
                                np.asarray(model.forward(params, tok, cfg)))


def test_config_errors_name_the_fix():
  with pytest.raises(UserError, match="swiglu_backend"):
    model.init_params(jax.random.PRNGKey(0), _cfg(swiglu_backend="cuda"))
  if jax.default_backend() == "gpu":
    return
  cfg = _cfg(swiglu_backend="triton")
  params = model.init_params(jax.random.PRNGKey(0), cfg)
  tok = jnp.zeros((1, 5), jnp.int32)
  with pytest.raises(UserError, match="swiglu_backend=xla"):   # training needs the kernel: say so
    jax.grad(lambda p: model.loss_fn(p, tok[:, :-1], tok[:, 1:], cfg))(params)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 256, 2, 1344), (3, 17, 2, 100), (1, 1, 2, 64)])
def test_gradient_matches_fp32_autodiff(shape):
  k1, k2 = jax.random.split(jax.random.PRNGKey(sum(shape)))
  h13 = (3 * jax.random.normal(k1, shape)).astype(jnp.bfloat16)
  da = jax.random.normal(k2, shape[:2] + shape[3:]).astype(jnp.bfloat16)
  got = jax.jit(lambda h, d: jax.vjp(swiglu_kernel.silu_mul, h)[1](d)[0])(h13, da)
  ref = jax.vjp(lambda h: jax.nn.silu(h[:, :, 0]) * h[:, :, 1], h13.astype(jnp.float32))[1](da.astype(jnp.float32))[0]
  assert got.dtype == jnp.bfloat16 and got.shape == h13.shape
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  for part in (0, 1):   # gate and up gradients, each against its own norm
    err = np.linalg.norm(got[:, :, part] - ref[:, :, part]) / np.linalg.norm(ref[:, :, part])
    assert err < 8e-3, (part, err)   # bf16 output rounding: ~3e-3


@pytest.mark.gpu
def test_model_loss_and_grads_equal_with_either_swiglu_backend():
  cfg = _cfg(compute_dtype="bfloat16", d_model=128, n_heads=4, d_ff=320)
  params = model.init_params(jax.random.PRNGKey(3), cfg)
  tok = jax.random.randint(jax.random.PRNGKey(4), (4, 33), 0, cfg.vocab_size)
  out = {}
  for backend in ("xla", "triton"):
    c = _cfg(compute_dtype="bfloat16", d_model=128, n_heads=4, d_ff=320, swiglu_backend=backend)
    out[backend] = jax.jit(jax.value_and_grad(lambda p, c=c: model.loss_fn(p, tok[:, :-1], tok[:, 1:], c)))(params)
  np.testing.assert_allclose(float(out["triton"][0]), float(out["xla"][0]), rtol=1e-6)   # same forward
  for g1, g2 in zip(jax.tree.leaves(out["triton"][1]), jax.tree.leaves(out["xla"][1])):
    assert float(jnp.linalg.norm(g1 - g2) / jnp.linalg.norm(g2)) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("n,c", [(32768, 2688), (21, 200), (1, 1), (300, 513)])
def test_transpose_fp8_matches_numpy(n, c):
  """The token-last e4m3 copies of fp8_mlp's weight gradient: x's bytes transposed exactly, and
  e4m3(x * row_scale * qmul) transposed, rounded as ml_dtypes rounds the fp32 product (saturating)."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  k = jax.random.split(jax.random.PRNGKey(n + c), 3)
  bits = jax.random.randint(k[0], (n, c), 0, 256, jnp.int32).astype(jnp.uint8)
  x8 = jax.lax.bitcast_convert_type(bits, jnp.float8_e4m3fn)
  got = jax.jit(swiglu_kernel.transpose_fp8)(x8)
  assert got.dtype == jnp.float8_e4m3fn and got.shape == (c, n)
  np.testing.assert_array_equal(np.asarray(jax.lax.bitcast_convert_type(got, jnp.uint8)), np.asarray(bits).T)
  x = (3 * jax.random.normal(k[1], (n, c))).astype(jnp.bfloat16)
  rs = jax.random.uniform(k[2], (n,), maxval=2.0)
  qmul = jnp.array([40.0], jnp.float32)   # some products pass 448: they saturate
  got = jax.jit(swiglu_kernel.transpose_fp8)(x, rs, qmul)
  prod = np.asarray(x, np.float32) * (np.asarray(rs) * np.float32(40.0))[:, None]
  want = np.clip(prod, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32).T
  np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), want)


@pytest.mark.gpu
@pytest.mark.parametrize("n,d", [(32768, 512), (300, 64)])
def test_transpose_fp8_remakes_the_norm_kernels_h_from_the_stream(n, d):
  """norm= (fp8_mlp.NORM_IN_WGRAD): h's token-last copy from the stream and its rstd is, byte for
  byte, the copy of the h that norm_kernel.forward writes, and that forward with write_h=False
  writes everything else unchanged; both against NumPy's bf16 h as well."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  import norm_kernel  # pylint: disable=import-outside-toplevel
  k = jax.random.split(jax.random.PRNGKey(n), 4)
  x = jax.random.normal(k[0], (n, d)).astype(jnp.bfloat16)
  y = (0.5 * jax.random.normal(k[1], (n, d))).astype(jnp.bfloat16)
  g = 1 + 0.3 * jax.random.normal(k[2], (d,))
  rs, qmul = jax.random.uniform(k[3], (n,), maxval=2.0), jnp.array([20.0], jnp.float32)
  q8 = jnp.array([0.5], jnp.float32)
  s, h, rstd, (h8, hs) = jax.jit(lambda *a: norm_kernel.forward(*a, jnp.bfloat16, fp8_qmul=q8))(x, y, g)
  s2, none, rstd2, (h82, hs2) = jax.jit(lambda *a: norm_kernel.forward(*a, jnp.bfloat16, fp8_qmul=q8, write_h=False))(
      x, y, g)
  assert none is None
  for a, b in ((s, s2), (rstd, rstd2), (hs, hs2)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  np.testing.assert_array_equal(np.asarray(jax.lax.bitcast_convert_type(h8, jnp.uint8)),
                                np.asarray(jax.lax.bitcast_convert_type(h82, jnp.uint8)))
  from_h = jax.jit(swiglu_kernel.transpose_fp8)(h, rs, qmul)
  from_s = jax.jit(lambda a, b, c, r, gg: swiglu_kernel.transpose_fp8(a, b, c, norm=(r, gg, jnp.bfloat16)))(
      s, rs, qmul, rstd, g)
  np.testing.assert_array_equal(np.asarray(jax.lax.bitcast_convert_type(from_s, jnp.uint8)),
                                np.asarray(jax.lax.bitcast_convert_type(from_h, jnp.uint8)))
  h_np = (np.asarray(s, np.float32) * np.asarray(rstd)[:, None] * np.asarray(g, np.float32)[None, :])
  h_np = h_np.astype(ml_dtypes.bfloat16).astype(np.float32)
  want = np.clip(h_np * (np.asarray(rs) * np.float32(20.0))[:, None], -448, 448).astype(ml_dtypes.float8_e4m3fn)
  np.testing.assert_array_equal(np.asarray(from_s.astype(jnp.float32)), want.astype(np.float32).T)


@pytest.mark.gpu
def test_fp8_backward_without_its_bf16_output_writes_the_same_e4m3_copy():
  """write_dh13=False (mlp_fp8_wgrad): no bf16 dH13, and the e4m3 copy and its scales unchanged."""
  k = jax.random.split(jax.random.PRNGKey(7), 4)
  N, F = 300, 1344
  h13 = (300 * jax.random.normal(k[0], (N, 2 * F))).astype(jnp.bfloat16)
  da = (50 * jax.random.normal(k[1], (N, F))).astype(jnp.bfloat16)
  hs, das = jax.random.uniform(k[2], (N,)) / 100, jax.random.uniform(k[3], (N,)) / 50
  qmul = jnp.array([0.01], jnp.float32)
  dh13, dh8, dhs = jax.jit(swiglu_kernel.backward_fp8)(h13, hs, da, das, qmul)
  none, dh8_only, dhs_only = jax.jit(lambda *a: swiglu_kernel.backward_fp8(*a, write_dh13=False))(h13, hs, da, das, qmul)
  assert dh13.shape == (N, 2 * F) and none is None
  np.testing.assert_array_equal(np.asarray(jax.lax.bitcast_convert_type(dh8_only, jnp.uint8)),
                                np.asarray(jax.lax.bitcast_convert_type(dh8, jnp.uint8)))
  np.testing.assert_array_equal(np.asarray(dhs_only), np.asarray(dhs))


@pytest.mark.gpu
def test_fp8_forward_without_its_bf16_output_writes_the_same_e4m3_copy():
  """write_act=False (mlp_fp8_wgrad_w2): no bf16 act, and the e4m3 copy and its scales unchanged."""
  k = jax.random.split(jax.random.PRNGKey(8), 2)
  N, F = 300, 1344
  h13 = (300 * jax.random.normal(k[0], (N, 2 * F))).astype(jnp.bfloat16)
  hs, qmul = jax.random.uniform(k[1], (N,)) / 100, jnp.array([0.02], jnp.float32)
  act, a8, as_ = jax.jit(swiglu_kernel.forward_fp8)(h13, hs, qmul)
  none, a8_only, as_only = jax.jit(lambda *a: swiglu_kernel.forward_fp8(*a, write_act=False))(h13, hs, qmul)
  assert act.shape == (N, F) and none is None
  np.testing.assert_array_equal(np.asarray(jax.lax.bitcast_convert_type(a8_only, jnp.uint8)),
                                np.asarray(jax.lax.bitcast_convert_type(a8, jnp.uint8)))
  np.testing.assert_array_equal(np.asarray(as_only), np.asarray(as_))


@pytest.mark.slow
def test_kernel_in_triton_interpreter_matches_numpy(triton_interpreter):
  """The Triton kernel itself, on CPU via TRITON_INTERPRET=1, against NumPy float64."""
  assert "worst error" in triton_interpreter("dev_interpret_swiglu.py")
