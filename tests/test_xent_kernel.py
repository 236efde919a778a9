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


# (B, T, D, V, tied, softcap): vocab below, at and above the kernel's 4096-wide block (xent_kernel.BLOCK_V), ragged ends.
CASES = [(2, 16, 64, 300, True, 0.0), (2, 64, 64, 4096, False, 0.0), (4, 128, 128, 10_000, True, 0.0),
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


def _fp8_head_inputs(b, t, d, v, tied, seed):
  """(spec, h, (e4m3 copy of h, its static scale), w, targets): a final-normed h and a head weight
  with logits of a few units, as head_fp8 sees them."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  g = 1 + 0.3 * jax.random.normal(k4, (d,))
  h = model.rms_norm(jax.random.normal(k1, (b, t, d), jnp.float32), g, jnp.bfloat16)
  q = fp8_mlp.static_scale(g)
  spec, shape = ("btd,vd->btv", (v, d)) if tied else ("btd,dv->btv", (d, v))
  w = (jax.random.normal(k2, shape, jnp.float32) * 2.0 / np.sqrt(d)).astype(jnp.bfloat16)
  return spec, h, (fp8_mlp.quantize_static(h, q), q), w, jax.random.randint(k3, (b, t), 0, v)


@pytest.mark.gpu
@pytest.mark.parametrize("b,t,d,v,tied,softcap", [CASES[2], CASES[3], (4, 256, 512, 10_000, True, 0.0)])
def test_fp8_head_matches_the_xla_reference(b, t, d, v, tied, softcap):
  """head_fp8: the kernel takes the e4m3 dot's raw logits and their scale (on the padded vocabulary)
  and gives the loss and gradients of model.py's XLA head with the same h8, which the CPU tests
  check against NumPy (tests/test_fp8_mlp.py); and the loss sits FP8 noise, not O(1), from the bf16
  head's, so the scale is applied."""
  import model  # pylint: disable=import-outside-toplevel
  import xent_kernel  # pylint: disable=import-outside-toplevel
  spec, h, h8, w, targets = _fp8_head_inputs(b, t, d, v, tied, seed=v + t)
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


def _codes_apart(got, want):
  """How many fp8 codes apart two same-format arrays are, entry by entry (0 where both are 0)."""
  a, b = (np.asarray(x).view(np.uint8).astype(np.int32) for x in (got, want))
  zero = (np.asarray(got, np.float32) == 0) & (np.asarray(want, np.float32) == 0)
  return np.where(zero, 0, np.abs(a - b))


@pytest.mark.gpu
@pytest.mark.parametrize("n,v,v_pad,softcap,xs", [(300, 300, 384, 0.0, 1.0), (4096, 10_000, 10_112, 0.0, 1 / 256),
                                                   (1000, 5001, 5120, 30.0, 1 / 256), (32768, 10_000, 10_112, 0.0, 1 / 64)])
def test_fp8_grad_kernel_writes_the_copies_xla_makes(n, v, v_pad, softcap, xs):
  """head_fp8_bwd's loss kernel: the loss, and U = softmax - onehot as e4m3(U * 448) [N, V_PAD] and
  e5m2(U * 2^15) [V_PAD, N] (fp8_mlp.head_grad_fp8 of U made in fp32 by XLA from the same logits):
  every entry the same code or a neighbour (the kernel's exp2 is 2 ulp from fp32's), at most 0.2% of
  entries off, the padding 0; rows not a multiple of the kernel's BT, a soft cap, a scale."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  import xent_kernel  # pylint: disable=import-outside-toplevel
  k1, k2 = jax.random.split(jax.random.key(n + v))
  z = (jax.random.normal(k1, (n, v_pad), jnp.float32) * 3.0 / xs).astype(jnp.bfloat16)
  t = jax.random.randint(k2, (n,), 0, v)
  x_scale = jnp.full((1,), xs, jnp.float32)
  loss, u8, u8t = jax.jit(lambda z, t: xent_kernel._fp8_rows(z, t, softcap, v, x_scale))(z, t)  # pylint: disable=protected-access

  def ref(z, t):
    x = z[:, :v].astype(jnp.float32) * xs
    c = softcap * jnp.tanh(x / softcap) if softcap else x
    lse = jax.nn.logsumexp(c, -1)
    u = jnp.exp(c - lse[:, None]) - jax.nn.one_hot(t, v)
    u = u * (1 - jnp.square(c / softcap)) if softcap else u
    loss = lse - jnp.take_along_axis(c, t[:, None], -1)[:, 0]
    return loss, *fp8_mlp.head_grad_fp8(jnp.pad(u, ((0, 0), (0, v_pad - v))))

  want = jax.jit(ref)(z, t)
  np.testing.assert_allclose(np.asarray(loss), np.asarray(want[0]), rtol=1e-5, atol=1e-5)
  assert u8.shape == (n, v_pad) and u8t.shape == (v_pad, n)
  assert not np.asarray(u8[:, v:], np.float32).any() and not np.asarray(u8t[v:], np.float32).any()
  for got, exp in ((u8, want[1]), (u8t, want[2])):
    apart = _codes_apart(got, exp)
    assert apart.max() <= 1 and apart.mean() < 2e-3, (apart.max(), apart.mean())


@pytest.mark.gpu
@pytest.mark.parametrize("b,t,d,v,tied,softcap", [CASES[2], CASES[3], (4, 256, 512, 10_000, True, 0.0)])
def test_fp8_backward_head_matches_the_xla_reference(b, t, d, v, tied, softcap):
  """head_fp8_bwd: the kernel path's loss and gradients equal model.py's XLA head with the same
  option (which the CPU tests check against NumPy) to within the rare one-code differences of its
  FP8 copies, and the gradients sit FP8 noise from the bf16-backward head's (changed, not broken)."""
  import model  # pylint: disable=import-outside-toplevel
  import xent_kernel  # pylint: disable=import-outside-toplevel
  spec, h, h8, w, targets = _fp8_head_inputs(b, t, d, v, tied, seed=v + t + 1)
  grad = lambda f, fp8_bwd: jax.jit(jax.value_and_grad(  # pylint: disable=unnecessary-lambda-assignment
      lambda h, w: 3 * f(spec, h, w, targets, softcap, h8, fp8_bwd), argnums=(0, 1)))
  got = grad(xent_kernel.head_cross_entropy, True)(h, w)
  ref = grad(model._head_cross_entropy, True)(h, w)  # pylint: disable=protected-access
  bf16 = grad(xent_kernel.head_cross_entropy, False)(h, w)
  np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=2e-3)
  assert got[1][0].shape == h.shape and got[1][1].shape == w.shape and got[1][1].dtype == w.dtype
  for i in (0, 1):
    assert _err(got[1][i], ref[1][i]) < 1e-2
    assert 1e-4 < _err(got[1][i], bf16[1][i]) < 0.1


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
