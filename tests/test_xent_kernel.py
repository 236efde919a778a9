"""Tests of xent_kernel.py (the Triton cross-entropy of the LM head).

GPU tests compare the loss and its gradients with respect to h and the head weight with jax.grad
of a plain jnp cross-entropy written here (no custom_vjp), on the same bf16 logits. The kernel's
gradient passes through bf16 (the logits gradient is stored in the compute dtype, as in model.py's
XLA path), so gradients are compared at 1e-2 relative Frobenius error; the loss at 1e-5.
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from errors import UserError


def _ref_loss(spec, h, w, targets, softcap):
  logits = jnp.einsum(spec, h, w).astype(jnp.float32)
  if softcap:
    logits = softcap * jnp.tanh(logits / softcap)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.mean(lse - picked)


def _err(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(got - ref) / np.linalg.norm(ref)


# (B, T, D, V, tied, softcap): vocab below, at and above the kernel's 8192-wide block (xent_kernel.BLOCK_V;
# 4096 before the twenty-seventh session), ragged ends.
CASES = [(2, 16, 64, 300, True, 0.0), (2, 64, 64, 4096, False, 0.0), (2, 32, 64, 8192, True, 0.0),
         (4, 128, 128, 10_000, True, 0.0),
         (3, 33, 96, 5_001, False, 30.0), (2, 64, 64, 10_000, True, 15.0)]


@pytest.mark.gpu
@pytest.mark.parametrize("b,t,d,v,tied,softcap", CASES)
def test_loss_and_gradients_match_plain_jax(b, t, d, v, tied, softcap):
  import xent_kernel  # pylint: disable=import-outside-toplevel
  k1, k2, k3 = jax.random.split(jax.random.key(v + t), 3)
  h = jax.random.normal(k1, (b, t, d), jnp.float32).astype(jnp.bfloat16)
  spec, shape = ("btd,vd->btv", (v, d)) if tied else ("btd,dv->btv", (d, v))
  w = (jax.random.normal(k2, shape, jnp.float32) * 2.0 / np.sqrt(d)).astype(jnp.bfloat16)
  targets = jax.random.randint(k3, (b, t), 0, v)
  # 3 * loss: a cotangent other than 1 must scale the gradients.
  got = jax.jit(jax.value_and_grad(lambda h, w: 3 * xent_kernel.head_cross_entropy(spec, h, w, targets, softcap),
                                   argnums=(0, 1)))(h, w)
  ref = jax.jit(jax.value_and_grad(lambda h, w: 3 * _ref_loss(spec, h.astype(jnp.float32), w.astype(jnp.float32),
                                                              targets, softcap), argnums=(0, 1)))(h, w)
  # The reference's logits are fp32 products of the same bf16 operands; the kernel reads them
  # rounded to bf16, so the loss agrees to bf16 rounding of the logits, averaged over tokens.
  np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=2e-3)
  # The head runs on the vocabulary padded to xent_kernel.VOCAB_ALIGN; w's gradient has w's shape.
  assert got[1][0].shape == h.shape and got[1][1].shape == w.shape and got[1][1].dtype == w.dtype
  assert _err(got[1][0], ref[1][0]) < 1e-2
  assert _err(got[1][1], ref[1][1]) < 1e-2
  plain = jax.jit(lambda h, w: xent_kernel.head_cross_entropy(spec, h, w, targets, softcap))(h, w)
  np.testing.assert_allclose(float(plain), float(got[0]) / 3, rtol=1e-6)   # loss-only path


@pytest.mark.gpu
def test_model_loss_and_grads_equal_with_either_xent_backend():
  import model  # pylint: disable=import-outside-toplevel
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=3000, d_model=128, n_layers=2, n_heads=4, d_ff=256, context_length=64))
  params = model.init_params(jax.random.key(0), cfg)
  tokens = jax.random.randint(jax.random.key(1), (4, 65), 0, cfg.vocab_size)
  out = {}
  for backend in ("xla", "triton"):
    c = cfg.copy_and_resolve_references()
    c.xent_backend = backend
    out[backend] = jax.jit(jax.value_and_grad(lambda p, c=c: model.loss_fn(p, tokens[:, :-1], tokens[:, 1:], c)))(params)
  np.testing.assert_allclose(float(out["triton"][0]), float(out["xla"][0]), rtol=1e-5)
  for g1, g2 in zip(jax.tree.leaves(out["triton"][1]), jax.tree.leaves(out["xla"][1])):
    assert _err(g1, g2) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("b,t,d,v,tied,softcap", [CASES[3], CASES[4], (4, 256, 512, 10_000, True, 0.0)])
def test_fp8_head_matches_the_xla_reference(b, t, d, v, tied, softcap):
  """head_fp8: the kernel takes the e4m3 dot's raw logits and their scale (on the padded vocabulary)
  and gives the loss and gradients of model.py's XLA head with the same h8, which the CPU tests
  check against NumPy (tests/test_fp8_mlp.py); and the loss sits FP8 noise, not O(1), from the bf16
  head's, so the scale is applied."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  import xent_kernel  # pylint: disable=import-outside-toplevel
  k1, k2, k3, k4 = jax.random.split(jax.random.key(v + t), 4)
  g = 1 + 0.3 * jax.random.normal(k4, (d,))
  h = model.rms_norm(jax.random.normal(k1, (b, t, d), jnp.float32), g, jnp.bfloat16)
  q = fp8_mlp.static_scale(g)
  h8 = (fp8_mlp.quantize_static(h, q), q)
  spec, shape = ("btd,vd->btv", (v, d)) if tied else ("btd,dv->btv", (d, v))
  w = (jax.random.normal(k2, shape, jnp.float32) * 2.0 / np.sqrt(d)).astype(jnp.bfloat16)
  targets = jax.random.randint(k3, (b, t), 0, v)
  grad = lambda f: jax.jit(jax.value_and_grad(lambda h, w: 3 * f(spec, h, w, targets, softcap, h8), argnums=(0, 1)))
  got = grad(xent_kernel.head_cross_entropy)(h, w)
  ref = grad(model._head_cross_entropy)(h, w)  # pylint: disable=protected-access
  np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=2e-3)
  assert got[1][0].shape == h.shape and got[1][1].shape == w.shape and got[1][1].dtype == w.dtype
  assert _err(got[1][0], ref[1][0]) < 1e-2
  assert _err(got[1][1], ref[1][1]) < 1e-2
  plain = jax.jit(lambda h, w: xent_kernel.head_cross_entropy(spec, h, w, targets, softcap, h8))(h, w)
  np.testing.assert_allclose(float(plain), float(got[0]) / 3, rtol=1e-6)   # loss-only path
  bf16 = jax.jit(lambda h, w: 3 * xent_kernel.head_cross_entropy(spec, h, w, targets, softcap))(h, w)
  assert 1e-5 < abs(float(bf16) - float(got[0])) / float(bf16) < 2e-2


def test_without_gpu_the_error_says_what_to_do():
  if jax.default_backend() == "gpu":
    pytest.skip("this machine has a GPU")
  import xent_kernel  # pylint: disable=import-outside-toplevel  (imports without triton)
  h = jnp.ones((1, 2, 8), jnp.bfloat16)
  with pytest.raises(UserError, match="xent_backend"):
    xent_kernel.head_cross_entropy("btd,vd->btv", h, jnp.ones((5, 8), jnp.bfloat16), jnp.zeros((1, 2), jnp.int32), 0.0)


def test_unknown_xent_backend_is_a_user_error():
  import model  # pylint: disable=import-outside-toplevel
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_ff=32, context_length=8, xent_backend="cuda"))
  with pytest.raises(UserError, match="xent_backend"):
    model.init_params(jax.random.key(0), cfg)


def test_kernel_in_triton_interpreter_matches_numpy(triton_interpreter):
  """The Triton kernel itself, on CPU via TRITON_INTERPRET=1, against NumPy float64."""
  assert "worst error" in triton_interpreter("dev_interpret_xent.py")


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("weight_t", [True, False])
def test_backward_dots_match_numpy(monkeypatch, tied, weight_t):
  """The backward's two dots from the kernel's dlogits (any array here, with its padded columns 0),
  with the head's dX reading w directly or its transposed copy (xent_kernel.DX_WEIGHT_T), against
  NumPy float64: dh = g dlogits w,
  dw = g dlogits^T h, w's gradient cut back to the real vocabulary."""
  import xent_kernel  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(xent_kernel, "DX_WEIGHT_T", weight_t)
  b, t, d, v, v_pad = 2, 8, 16, 40, 48
  rng = np.random.default_rng(0)
  h = rng.standard_normal((b, t, d)).astype(np.float32)
  w_vd = np.zeros((v_pad, d), np.float32)
  w_vd[:v] = rng.standard_normal((v, d))
  dlogits = np.zeros((b, t, v_pad), np.float32)
  dlogits[..., :v] = rng.standard_normal((b, t, v))
  spec, w_pad = ("btd,vd->btv", w_vd) if tied else ("btd,dv->btv", w_vd.T)
  res = (jnp.asarray(h), jnp.asarray(w_pad), jnp.asarray(dlogits), jnp.zeros((0, v), jnp.float32), None)
  bwd = lambda r, g: xent_kernel._bwd(spec, 0.0, r, g)  # pylint: disable=protected-access,unnecessary-lambda-assignment
  dh, dw, dt, dh8 = jax.jit(bwd)(res, jnp.float32(3.0))
  assert dt is None and dh8 is None
  d64 = dlogits.astype(np.float64)
  np.testing.assert_allclose(np.asarray(dh), 3 * d64 @ w_vd, rtol=1e-5, atol=1e-5)
  dw_vd = 3 * np.einsum("btv,btd->vd", d64, h)[:v]
  np.testing.assert_allclose(np.asarray(dw), dw_vd if tied else dw_vd.T, rtol=1e-5, atol=1e-5)
