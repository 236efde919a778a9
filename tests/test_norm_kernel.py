"""Tests of norm_kernel.py (residual add + RMSNorm in one Triton kernel) and its use in model.py.

GPU tests compare the kernel's outputs and gradients with jax.vjp of the same math written in plain
jnp here (fp32 statistics), for an fp32 and a bf16 residual stream; on CPU, the model's regrouped
layer loop is checked against block() with a plain-jnp stand-in for the kernel, and the Triton
kernels themselves run in Triton's interpreter against NumPy (bench/dev_interpret_norm.py).
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import model
import norm_kernel
from errors import UserError


def _ref_add_rms_norm(x, y, gain, dtype):
  """x + y rounded to x's dtype, then RMSNorm (eps 1e-5) in fp32 times gain, in `dtype`."""
  s = (x.astype(jnp.float32) + y.astype(jnp.float32)).astype(x.dtype)
  s32 = s.astype(jnp.float32)
  h = s32 * jax.lax.rsqrt(jnp.mean(s32 * s32, -1, keepdims=True) + 1e-5) * gain.astype(jnp.float32)
  return s, h.astype(dtype)


def _ref_rms_norm_first(x, gain, dtype, fp8_qmul=None, dh_mul=1.0):
  """norm_kernel.rms_norm_first in plain jnp: (x, RMSNorm(x) * gain, e4m3(h * q) or None); dh_mul
  (h's cotangent arriving scaled, attn_fp8_dqkv with attention_kernel.DH_SCALE='norm') is not modelled."""
  assert dh_mul == 1.0, "the reference has no scaled cotangent"
  h = _ref_add_rms_norm(x, jnp.zeros_like(x), gain, dtype)[1]
  h8 = None if fp8_qmul is None else jax.lax.stop_gradient(
      jnp.clip(h.astype(jnp.float32) * fp8_qmul, -448.0, 448.0).astype(jnp.float8_e4m3fn))
  return x, h, h8


def _cfg(**kw):
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=300, context_length=32, d_model=64, n_layers=3, n_heads=4, d_ff=128,
                  compute_dtype="float32"))
  cfg.update(kw)
  return cfg


def _params_with_random_gains(cfg):
  """Init params, but gains far from 1 and all different, so a gain used in the wrong place shows."""
  params = model.init_params(jax.random.PRNGKey(0), cfg)
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 8))
  for name in ("attn_norm", "mlp_norm"):
    params["blocks"][name] = 1 + 0.5 * jax.random.normal(next(keys), params["blocks"][name].shape)
  params["final_norm"] = 1 + 0.5 * jax.random.normal(next(keys), params["final_norm"].shape)
  return params


def _ref_embed_rms_norm_first(table, tokens, gain, stream_dtype, dtype, fp8_qmul=None, head_dtype=None, dh_mul=1.0):
  """norm_kernel.embed_rms_norm_first in plain jnp: the lookup, then _ref_rms_norm_first (and the
  table in head_dtype, with head_dtype)."""
  out = _ref_rms_norm_first(table[tokens].astype(stream_dtype), gain, dtype, fp8_qmul, dh_mul)
  return out if head_dtype is None else (*out, table.astype(head_dtype))


@pytest.mark.parametrize("embed_in_norm", [False, "lookup", "grad"])
def test_fused_layer_loop_equals_block_by_block(monkeypatch, embed_in_norm):
  """norm_backend='triton' regroups the layers (each add carries the next norm's gain); with the
  kernel replaced by plain jnp, loss and every gradient equal the block() path's, also with the
  embedding lookup handed to the first norm (norm_kernel.EMBED_IN_FIRST_NORM) and, tied or not,
  with the tied head's weight taken from it (EMBED_GRAD_IN_FIRST_NORM)."""
  monkeypatch.setattr(norm_kernel, "add_rms_norm", _ref_add_rms_norm)
  monkeypatch.setattr(norm_kernel, "rms_norm_first", _ref_rms_norm_first)
  calls = []
  monkeypatch.setattr(norm_kernel, "embed_rms_norm_first",
                      lambda *a, **k: calls.append(a[6:]) or _ref_embed_rms_norm_first(*a, **k))
  monkeypatch.setattr(norm_kernel, "EMBED_IN_FIRST_NORM", embed_in_norm == "lookup")
  monkeypatch.setattr(norm_kernel, "EMBED_GRAD_IN_FIRST_NORM", embed_in_norm == "grad")
  for residual, tied in (("float32", True), ("bfloat16", True), ("bfloat16", False)):
    cfg = _cfg(residual_dtype=residual, tie_embeddings=tied)
    params = _params_with_random_gains(cfg)
    tok = jax.random.randint(jax.random.PRNGKey(2), (2, 17), 0, cfg.vocab_size)
    f = lambda p, c: model.loss_fn(p, tok[:, :-1], tok[:, 1:], c)  # pylint: disable=unnecessary-lambda-assignment
    want = jax.value_and_grad(f)(params, cfg)
    got = jax.value_and_grad(f)(params, _cfg(residual_dtype=residual, tie_embeddings=tied, norm_backend="triton"))
    # the head's weight comes out of the first norm exactly when it is tied and EMBED_GRAD is on
    assert [c[0] for c in calls] == ([jnp.float32] if tied and embed_in_norm == "grad" else
                                     [] if not embed_in_norm else [None]), calls
    calls.clear()
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got[1]), jax.tree.leaves(want[1])):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=1e-6, err_msg=str(path))


def test_config_errors_name_the_fix():
  with pytest.raises(UserError, match="norm_backend"):
    model.init_params(jax.random.PRNGKey(0), _cfg(norm_backend="cuda"))
  with pytest.raises(UserError, match="scan_layers=False"):
    model.init_params(jax.random.PRNGKey(0), _cfg(norm_backend="triton", scan_layers=True))


def test_without_gpu_the_error_says_what_to_do():
  if jax.default_backend() == "gpu":
    pytest.skip("this machine has a GPU")
  x = jnp.ones((1, 2, 8), jnp.float32)
  with pytest.raises(UserError, match="norm_backend"):
    norm_kernel.add_rms_norm(x, x.astype(jnp.bfloat16), jnp.ones((8,)), jnp.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("stream", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(4, 128, 512), (3, 17, 96), (1, 1, 32), (2, 9, 768)])
def test_outputs_and_gradients_match_plain_jax(shape, stream):
  k = jax.random.split(jax.random.PRNGKey(sum(shape)), 5)
  x = (2 * jax.random.normal(k[0], shape)).astype(stream)
  y = jax.random.normal(k[1], shape).astype(jnp.bfloat16)
  gain = 1 + 0.3 * jax.random.normal(k[2], shape[-1:])
  dx_out = jax.random.normal(k[3], shape).astype(stream)
  dh = jax.random.normal(k[4], shape).astype(jnp.bfloat16)

  def both(f):
    out, vjp = jax.vjp(lambda x, y, g: f(x, y, g, jnp.bfloat16), x, y, gain)
    return out, vjp((dx_out, dh))

  got = jax.jit(lambda: both(norm_kernel.add_rms_norm))()
  want = jax.jit(lambda: both(_ref_add_rms_norm))()
  err = lambda a, b: float(jnp.linalg.norm((a.astype(jnp.float32) - b.astype(jnp.float32)).ravel())  # pylint: disable=unnecessary-lambda-assignment
                           / jnp.linalg.norm(b.astype(jnp.float32).ravel()))
  (s, h), (dx, dy, dg) = got
  (s_ref, h_ref), (dx_ref, dy_ref, dg_ref) = want
  assert (s.dtype, h.dtype, dx.dtype, dy.dtype, dg.dtype) == (x.dtype, jnp.bfloat16, x.dtype, y.dtype, gain.dtype)
  np.testing.assert_array_equal(np.asarray(s, np.float32), np.asarray(s_ref, np.float32))   # the same rounding
  assert err(h, h_ref) < 1e-2
  # The reference adds the two cotangents in the stream dtype (autodiff); the kernel in fp32.
  tol = 1e-5 if stream == "float32" else 1e-2
  assert err(dx, dx_ref) < tol and err(dy, dy_ref) < 1e-2 and err(dg, dg_ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("stream", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,fp8", [((4, 128, 512), True), ((3, 17, 96), False), ((2, 9, 768), True)])
def test_first_norm_outputs_and_gradients_match_plain_jax(shape, stream, fp8):
  """rms_norm_first (no add): x passed through, h and its e4m3 copy as plain jnp makes them, and the
  gradient of x from both cotangents (the stream's and h's) and of the gain."""
  k = jax.random.split(jax.random.PRNGKey(sum(shape)), 4)
  x = (2 * jax.random.normal(k[0], shape)).astype(stream)
  gain = 1 + 0.3 * jax.random.normal(k[1], shape[-1:])
  q = jnp.full((1,), 448.0 / (np.sqrt(shape[-1]) * float(jnp.abs(gain).max())), jnp.float32) if fp8 else None
  dx_out = jax.random.normal(k[2], shape).astype(stream)
  dh = jax.random.normal(k[3], shape).astype(jnp.bfloat16)

  def both(f):
    out, vjp = jax.vjp(lambda x, g: f(x, g, jnp.bfloat16, q)[:2], x, gain)
    return f(x, gain, jnp.bfloat16, q), vjp((dx_out, dh))

  (x_out, h, h8), (dx, dg) = jax.jit(lambda: both(norm_kernel.rms_norm_first))()
  (_, h_ref, h8_ref), (dx_ref, dg_ref) = jax.jit(lambda: both(_ref_rms_norm_first))()
  err = lambda a, b: float(jnp.linalg.norm((a.astype(jnp.float32) - b.astype(jnp.float32)).ravel())  # pylint: disable=unnecessary-lambda-assignment
                           / jnp.linalg.norm(b.astype(jnp.float32).ravel()))
  np.testing.assert_array_equal(np.asarray(x_out, np.float32), np.asarray(x, np.float32))
  assert (h.dtype, dx.dtype, dg.dtype) == (jnp.bfloat16, x.dtype, gain.dtype)
  assert err(h, h_ref) < 1e-2
  if fp8:
    assert h8.dtype == jnp.float8_e4m3fn and err(h8, h8_ref) < 3e-2   # e4m3 of nearly the same h
  else:
    assert h8 is None
  tol = 1e-5 if stream == "float32" else 1e-2
  assert err(dx, dx_ref) < tol and err(dg, dg_ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("stream", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,fp8", [((4, 128, 512), True), ((3, 17, 96), False)])
def test_first_norm_with_the_lookup_equals_gather_then_norm(shape, stream, fp8):
  """embed_rms_norm_first (the lookup inside the kernel) gives what XLA's gather followed by
  rms_norm_first gives: the same stream, h and e4m3 copy bit for bit (the same rounding of the same
  rows), and the same gradients of the table (the gather's scatter-add; fp32 atomics may sum
  repeated tokens in another order) and the gain."""
  B, T, D = shape
  V = 300   # fewer rows than tokens: repeated tokens sum their rows' gradients
  k = jax.random.split(jax.random.PRNGKey(sum(shape)), 5)
  table = 2 * jax.random.normal(k[0], (V, D))
  tokens = jax.random.randint(k[1], (B, T), 0, V)
  gain = 1 + 0.3 * jax.random.normal(k[2], (D,))
  q = jnp.full((1,), 448.0 / (np.sqrt(D) * float(jnp.abs(gain).max())), jnp.float32) if fp8 else None
  dx_out = jax.random.normal(k[3], shape).astype(stream)
  dh = jax.random.normal(k[4], shape).astype(jnp.bfloat16)
  gathered = lambda e, t, g, sd, dt, q8: norm_kernel.rms_norm_first(e[t].astype(sd), g, dt, q8)  # pylint: disable=unnecessary-lambda-assignment

  def both(f):
    out, vjp = jax.vjp(lambda e, g: f(e, tokens, g, jnp.dtype(stream), jnp.bfloat16, q)[:2], table, gain)
    return f(table, tokens, gain, jnp.dtype(stream), jnp.bfloat16, q), vjp((dx_out, dh))

  (x, h, h8), (de, dg) = jax.jit(lambda: both(norm_kernel.embed_rms_norm_first))()
  (x_ref, h_ref, h8_ref), (de_ref, dg_ref) = jax.jit(lambda: both(gathered))()
  assert (x.dtype, h.dtype, de.dtype) == (jnp.dtype(stream), jnp.bfloat16, jnp.float32)
  for a, b in ((x, x_ref), (h, h_ref)) + (((h8, h8_ref),) if fp8 else ()):
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
  assert h8 is None if not fp8 else h8.dtype == jnp.float8_e4m3fn
  np.testing.assert_allclose(np.asarray(de), np.asarray(de_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dg), np.asarray(dg_ref), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("lookup", [False, True])
@pytest.mark.parametrize("stream", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,head", [((4, 128, 512), True), ((3, 17, 96), False)])
def test_first_norm_backward_scatters_into_the_table(monkeypatch, shape, head, stream, lookup):
  """EMBED_GRAD_IN_FIRST_NORM: the norm's backward kernel adds each row's gradient into the table's
  (atomics) on top of the head's cotangent. Against NumPy: the table's gradient is the head's
  cotangent in fp32 plus, for each token, the stream's gradient rounded to the stream dtype, summed
  per row in float64 (np.add.at); the stream's gradient comes from the XLA-scatter version, whose
  own backward is rms_norm_first's (tested above). Same outputs, same gain gradient."""
  B, T, D = shape
  V = 300   # fewer rows than tokens: repeated tokens sum their rows' gradients
  k = jax.random.split(jax.random.PRNGKey(sum(shape) + 7), 6)
  table = 2 * jax.random.normal(k[0], (V, D))
  tokens = jax.random.randint(k[1], (B, T), 0, V)
  gain = 1 + 0.3 * jax.random.normal(k[2], (D,))
  dx_out = jax.random.normal(k[3], shape).astype(stream)
  dh = jax.random.normal(k[4], shape).astype(jnp.bfloat16)
  dw = jax.random.normal(k[5], (V, D)).astype(jnp.bfloat16) if head else None
  monkeypatch.setattr(norm_kernel, "EMBED_IN_FIRST_NORM", lookup)

  def run(fused):
    monkeypatch.setattr(norm_kernel, "EMBED_GRAD_IN_FIRST_NORM", fused)
    f = lambda e, g: norm_kernel.embed_rms_norm_first(  # pylint: disable=unnecessary-lambda-assignment
        e, tokens, g, jnp.dtype(stream), jnp.bfloat16, None, jnp.bfloat16 if head else None)
    def both():
      out, vjp = jax.vjp(lambda e, g: tuple(o for o in f(e, g) if o is not None), table, gain)
      return out, vjp((dx_out, dh) + ((dw,) if head else ()))
    return jax.jit(both)()

  out, (de, dg) = run(True)
  out_ref, (de_x, dg_ref) = run(False)
  for a, b in zip(out, out_ref):
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
  # the stream's gradient row by row, from the XLA version's pieces: rms_norm_first's backward
  _, vjp = jax.vjp(lambda x: norm_kernel.rms_norm_first(x, gain, jnp.bfloat16)[:2], table[tokens].astype(stream))
  dx = np.asarray(vjp((dx_out, dh))[0].astype(jnp.float32), np.float64).reshape(-1, D)
  want = np.zeros((V, D)) if dw is None else np.asarray(dw.astype(jnp.float32), np.float64)
  np.add.at(want, np.asarray(tokens).reshape(-1), dx)
  assert de.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(de), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(de_x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dg), np.asarray(dg_ref), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_model_loss_and_grads_equal_with_either_norm_backend():
  cfg = _cfg(compute_dtype="bfloat16", d_model=128, n_heads=4, d_ff=256)
  params = _params_with_random_gains(cfg)
  tok = jax.random.randint(jax.random.PRNGKey(3), (4, 33), 0, cfg.vocab_size)
  out = {}
  for backend in ("xla", "triton"):
    c = _cfg(compute_dtype="bfloat16", d_model=128, n_heads=4, d_ff=256, norm_backend=backend)
    out[backend] = jax.jit(jax.value_and_grad(lambda p, c=c: model.loss_fn(p, tok[:, :-1], tok[:, 1:], c)))(params)
  np.testing.assert_allclose(float(out["triton"][0]), float(out["xla"][0]), rtol=1e-3)
  for g1, g2 in zip(jax.tree.leaves(out["triton"][1]), jax.tree.leaves(out["xla"][1])):
    assert float(jnp.linalg.norm(g1 - g2) / jnp.linalg.norm(g2)) < 2e-2


@pytest.mark.slow
def test_kernels_in_triton_interpreter_match_numpy(triton_interpreter):
  """The Triton kernels themselves, on CPU via TRITON_INTERPRET=1, against NumPy float64."""
  assert "worst error" in triton_interpreter("dev_interpret_norm.py")
