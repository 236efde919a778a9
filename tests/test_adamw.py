"""adamw.py against optax.adamw, a NumPy transcription of Loshchilov & Hutter, and hand numbers."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamw
from errors import UserError


def random_tree(seed):
  rng = np.random.default_rng(seed)
  return {"embed": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
          "blocks": {"w": jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32),
                     "attn_norm": jnp.asarray(1 + 0.1 * rng.normal(size=(2, 5)), jnp.float32)},
          "final_norm": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}


def test_matches_optax_adamw_over_100_steps():
  params = random_tree(0)
  mask = adamw.decay_mask(params)
  kw = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  ref_opt = optax.adamw(1e-2, mask=mask, **kw)
  ref_params, ref_state = params, ref_opt.init(params)
  ours, state = params, adamw.init(params)
  step = jax.jit(lambda g, s, p: adamw.update(g, s, p, 1e-2, mask=mask, **kw))
  for i in range(100):
    grads = jax.tree.map(lambda x, i=i: x * 0 + jnp.asarray(
        np.random.default_rng(1000 + i).normal(size=x.shape), jnp.float32), params)
    updates, ref_state = ref_opt.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
    ours, state = step(grads, state, ours)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  assert int(state["count"]) == 100
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), ours, params)
  assert min(jax.tree.leaves(moved)) > 0.1, "100 steps of lr 1e-2 must move every leaf"


def np_adamw_algorithm2(theta, grad_fn, steps, alpha, b1, b2, eps, lam, eta):
  """Loshchilov & Hutter (2019), Algorithm 2, AdamW branch, in float64:
  m_t = b1 m + (1-b1) g;  v_t = b2 v + (1-b2) g^2;  m^ = m_t/(1-b1^t);  v^ = v_t/(1-b2^t);
  theta_t = theta_{t-1} - eta_t (alpha m^/(sqrt(v^)+eps) + lam theta_{t-1})."""
  m, v = np.zeros_like(theta), np.zeros_like(theta)
  for t in range(1, steps + 1):
    g = grad_fn(theta)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    theta = theta - eta(t) * (alpha * m_hat / (np.sqrt(v_hat) + eps) + lam * theta)
  return theta


def test_matches_loshchilov_hutter_algorithm2():
  # A least-squares problem optimised for 60 steps under a cosine schedule multiplier eta_t.
  rng = np.random.default_rng(0)
  A, b = rng.normal(size=(8, 6)), rng.normal(size=8)
  theta0 = rng.normal(size=6)
  alpha, lam, steps = 0.05, 0.01, 60
  eta = lambda t: 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))
  want = np_adamw_algorithm2(theta0, lambda th: A.T @ (A @ th - b), steps, alpha, 0.9, 0.999, 1e-8, lam, eta)
  # Ours is theta -= lr (m^/(sqrt(v^)+eps) + wd theta): lr = eta_t alpha, wd = lam / alpha.
  A32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
  grad = jax.grad(lambda th: 0.5 * jnp.sum((A32 @ th - b32) ** 2))
  theta = {"w": jnp.asarray(theta0, jnp.float32)}
  state = adamw.init(theta)
  for t in range(1, steps + 1):
    theta, state = adamw.update({"w": grad(theta["w"])}, state, theta, eta(t) * alpha,
                                b1=0.9, b2=0.999, eps=1e-8, weight_decay=lam / alpha)
  np.testing.assert_allclose(theta["w"], want, atol=2e-5)
  assert np.abs(want - theta0).max() > 0.5


def _np_bf16(x):
  """Round-to-nearest-even to bf16, in float64 (what a bf16 store does to an fp32 value)."""
  return np.asarray(np.asarray(x, np.float32).astype(jnp.bfloat16), np.float64)


def test_bf16_moments_match_a_numpy_adamw_that_rounds_them_each_step():
  """moment_dtype='bfloat16': the update uses the fp32 moments it just made and stores them rounded
  to bf16; a float64 NumPy AdamW doing the same agrees over 30 steps (with decay, a masked leaf and
  clipping), and the state stays bf16 through jit."""
  params = random_tree(5)
  mask = adamw.decay_mask(params)
  state = adamw.init(params, "bfloat16")
  assert {x.dtype for x in jax.tree.leaves((state["mu"], state["nu"]))} == {jnp.dtype(jnp.bfloat16)}
  step = jax.jit(lambda g, s, p, c: adamw.update(g, s, p, 1e-2, mask=mask, grad_scale=c))
  grads_at = lambda i: jax.tree.map(lambda x: jnp.asarray(
      np.random.default_rng(500 + i).normal(size=x.shape) * 2, jnp.float32), params)
  ours = params
  for i in range(30):
    ours, state = step(grads_at(i), state, ours, jnp.float32(0.5 if i % 3 == 0 else 1.0))
  assert {x.dtype for x in jax.tree.leaves((state["mu"], state["nu"]))} == {jnp.dtype(jnp.bfloat16)}
  flat_mask = jax.tree.leaves(mask)
  for j, (p0, got, got_m) in enumerate(zip(jax.tree.leaves(params), jax.tree.leaves(ours),
                                           jax.tree.leaves(state["mu"]))):
    theta = np.asarray(p0, np.float64)
    m = v = np.zeros_like(theta)
    for i in range(30):
      g = np.asarray(jax.tree.leaves(grads_at(i))[j], np.float64) * (0.5 if i % 3 == 0 else 1.0)
      m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
      u = (m / (1 - 0.9 ** (i + 1))) / (np.sqrt(v / (1 - 0.95 ** (i + 1))) + 1e-8)
      theta = theta - 1e-2 * (u + (0.1 * theta if flat_mask[j] else 0.0))
      m, v = _np_bf16(m), _np_bf16(v)
    np.testing.assert_allclose(np.asarray(got_m, np.float64), m, rtol=2 ** -7, atol=1e-6)
    np.testing.assert_allclose(got, theta, rtol=0, atol=2e-5)


def test_unknown_moment_dtype_is_a_user_error():
  with pytest.raises(UserError, match=r"moment_dtype 'float16' is unknown.*--config.train.moment_dtype"):
    adamw.init(random_tree(0), "float16")


def test_clip_by_global_norm_against_numpy():
  tree = random_tree(3)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  norm = math.sqrt(sum((x ** 2).sum() for x in leaves))
  assert float(adamw.global_norm(tree)) == pytest.approx(norm, rel=1e-6)
  clipped, got_norm = adamw.clip_by_global_norm(tree, 1.0)
  assert float(got_norm) == pytest.approx(norm, rel=1e-6)
  for c, x in zip(jax.tree.leaves(clipped), leaves):
    np.testing.assert_allclose(c, x * 1.0 / (norm + 1e-6), rtol=1e-5)
  assert float(adamw.global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)
  unclipped, _ = adamw.clip_by_global_norm(tree, norm * 2)  # below the limit: untouched
  for c, x in zip(jax.tree.leaves(unclipped), leaves):
    np.testing.assert_allclose(c, x, rtol=1e-6)


def test_cosine_schedule_at_key_steps():
  lr = lambda s: float(adamw.lr_at(s, lr=1e-3, warmup_steps=10, total_steps=110, min_lr=1e-4))
  assert lr(0) == 0.0
  assert lr(5) == pytest.approx(5e-4)
  assert lr(10) == pytest.approx(1e-3)
  assert lr(35) == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi / 4)) / 2)  # 8.68198e-4
  assert lr(35) == pytest.approx(8.681980515e-4)
  assert lr(60) == pytest.approx(5.5e-4)          # half way: the mean of lr and min_lr
  assert lr(110) == pytest.approx(1e-4)
  assert lr(500) == pytest.approx(1e-4)


def test_wsd_and_constant_schedules_at_key_steps():
  wsd = lambda s: float(adamw.lr_at(s, lr=1e-3, warmup_steps=10, total_steps=100, min_lr=0.0,
                                    schedule="wsd", decay_frac=0.2))
  assert wsd(5) == pytest.approx(5e-4)
  assert wsd(10) == wsd(50) == wsd(80) == pytest.approx(1e-3)  # stable until the last 20%
  assert wsd(90) == pytest.approx(5e-4)
  assert wsd(100) == pytest.approx(0.0, abs=1e-12) and wsd(120) == pytest.approx(0.0, abs=1e-12)
  const = lambda s: float(adamw.lr_at(s, lr=3e-4, warmup_steps=4, total_steps=10, min_lr=0.0,
                                      schedule="constant"))
  assert [const(s) for s in (0, 2, 4, 50)] == pytest.approx([0.0, 1.5e-4, 3e-4, 3e-4])
  no_warmup = adamw.lr_at(0, lr=1e-3, warmup_steps=0, total_steps=10, min_lr=0.0)
  assert float(no_warmup) == pytest.approx(1e-3)


def test_schedule_is_jittable_with_a_traced_step():
  f = jax.jit(lambda s: adamw.lr_at(s, lr=1e-3, warmup_steps=10, total_steps=110, min_lr=1e-4))
  np.testing.assert_allclose([f(jnp.int32(s)) for s in (5, 60, 200)], [5e-4, 5.5e-4, 1e-4], rtol=1e-5)


def test_bad_schedule_is_a_user_error():
  with pytest.raises(UserError, match="schedule"):
    adamw.lr_at(0, lr=1.0, warmup_steps=1, total_steps=10, min_lr=0.0, schedule="linear")
  with pytest.raises(UserError, match="warmup_steps"):
    adamw.lr_at(0, lr=1.0, warmup_steps=10, total_steps=10, min_lr=0.0)


def test_decay_mask_leaves_norm_gains_undecayed():
  import model  # pylint: disable=import-outside-toplevel
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64))
  params = model.init_params(jax.random.PRNGKey(0), cfg)
  mask = adamw.decay_mask(params)
  assert mask["embed"] and mask["blocks"]["wqkv"] and mask["blocks"]["w13"] and mask["blocks"]["wo"]
  assert not mask["final_norm"] and not mask["blocks"]["attn_norm"] and not mask["blocks"]["mlp_norm"]
  # With zero gradients only weight decay acts: matrices shrink by (1 - lr wd), gains stay exactly.
  zeros = jax.tree.map(jnp.zeros_like, params)
  new, _ = adamw.update(zeros, adamw.init(params), params, 0.1, weight_decay=0.5, mask=mask)
  np.testing.assert_array_equal(new["final_norm"], params["final_norm"])
  np.testing.assert_array_equal(new["blocks"]["attn_norm"], params["blocks"]["attn_norm"])
  np.testing.assert_allclose(new["blocks"]["w2"], params["blocks"]["w2"] * 0.95, rtol=1e-6)
  # An array mask (e.g. restored from a checkpoint) must act the same as the Python-bool one.
  array_mask = jax.tree.map(jnp.asarray, mask)
  new2, _ = jax.jit(lambda p, m: adamw.update(zeros, adamw.init(p), p, 0.1, weight_decay=0.5, mask=m))(
      params, array_mask)
  for a, b in zip(jax.tree.leaves(new2), jax.tree.leaves(new)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_state_is_fp32_for_bf16_grads():
  params = random_tree(0)
  grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), random_tree(1))
  new, state = adamw.update(grads, adamw.init(params), params, 1e-3)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((new, state["mu"], state["nu"])))


def test_grad_scale_gives_the_clipped_update_and_update_and_norm_the_params_norm():
  """train.py hands the clipping factor to the update instead of clipping first: the same params,
  for fp32 and bf16 gradients; update_and_norm's third value is the new params' global norm."""
  params = random_tree(4)
  for dtype in (jnp.float32, jnp.bfloat16):
    grads = jax.tree.map(lambda x, dtype=dtype: (x * 5).astype(dtype), random_tree(5))
    clipped, norm = adamw.clip_by_global_norm(grads, 1.0)
    scale = adamw.clip_scale(norm, 1.0)
    assert float(scale) < 0.5   # the norm is well above 1: this clips
    mask = adamw.decay_mask(params)
    want, want_state = adamw.update(clipped, adamw.init(params), params, 1e-2, mask=mask)
    got, got_state, got_norm = adamw.update_and_norm(grads, adamw.init(params), params, 1e-2, mask=mask,
                                                     grad_scale=scale)
    for a, b in zip(jax.tree.leaves((got, got_state)), jax.tree.leaves((want, want_state))):
      np.testing.assert_array_equal(a, b)
    norm64 = math.sqrt(sum((np.asarray(x, np.float64) ** 2).sum() for x in jax.tree.leaves(got)))
    assert float(got_norm) == pytest.approx(norm64, rel=1e-6)


def test_unknown_backend_and_triton_without_a_gpu_are_user_errors():
  params = random_tree(0)
  with pytest.raises(UserError, match="adamw_backend"):
    adamw.update(params, adamw.init(params), params, 1e-3, backend="cuda")
  if jax.default_backend() != "gpu":
    # A large leaf goes to the kernel, whose import or launch needs a GPU: the error names the fix.
    big = {"w": jnp.ones((256, 512), jnp.float32)}
    with pytest.raises(UserError, match=r"--config\.train\.adamw_backend=xla"):
      adamw.update(big, adamw.init(big), big, 1e-3, backend="triton")


def test_triton_kernel_in_interpreter_matches_numpy(triton_interpreter):
  """adamw_kernel_triton.py in Triton's CPU interpreter against AdamW in NumPy float64, four steps
  with clipping and decay on and off, fp32 and bf16 gradients, ragged last programs."""
  assert "worst error" in triton_interpreter("dev_interpret_adamw.py")


def _assert_close_but_rare_flips(got, want, atol, flips):
  """|got - want| <= atol + 2e-5 |want| everywhere or, with flips (bf16 moments), in all but 10% of
  the elements, those within 3e-3 (a few rounding flips' worth; a wrong update moves every element,
  by ~lr = 1e-2 a step)."""
  bad = np.abs(got - want) > atol + 2e-5 * np.abs(want)
  assert bad.mean() <= (0.1 if flips else 0.0), (int(bad.sum()), bad.size, float(np.abs(got - want).max()))
  np.testing.assert_allclose(got, want, rtol=0, atol=3e-3 if flips else atol + 2e-5 * np.abs(want).max())


def _big_tree(seed):
  """Leaves above adamw.TRITON_MIN_SIZE (kernel) and below it (XLA), a decayed matrix, an undecayed
  large '*_norm' leaf, and a size that leaves the last program ragged."""
  rng = np.random.default_rng(seed)
  return {"embed": jnp.asarray(rng.normal(size=(1001, 129)), jnp.float32),
          "blocks": {"w13": jnp.asarray(rng.normal(size=(2, 256, 300)), jnp.float32),
                     "attn_norm": jnp.asarray(1 + 0.1 * rng.normal(size=(4, 20000)), jnp.float32),
                     "mlp_norm": jnp.asarray(1 + 0.1 * rng.normal(size=(2, 64)), jnp.float32)}}


@pytest.mark.gpu
@pytest.mark.parametrize("moments", ["float32", "bfloat16"])
def test_triton_backend_matches_the_xla_backend_and_numpy_over_20_steps(moments):
  """The Triton update (GPU) against the XLA one and a float64 NumPy AdamW, over 20 jitted steps
  with the state donated (the kernel then updates in place), a traced lr and clipping scale, and
  bf16 gradients for one leaf; the returned params norm against NumPy's. With bf16 moments both
  round the same fp32 values, so they agree to a bf16 rounding flip; NumPy rounds its moments too."""
  params = _big_tree(0)
  mask = adamw.decay_mask(params)
  assert mask["blocks"]["attn_norm"] is False and mask["embed"] is True
  kw = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask)

  def make(backend):
    def step(p, s, g, lr, scale):
      return adamw.update_and_norm(g, s, p, lr, grad_scale=scale, backend=backend, **kw)
    return jax.jit(step, donate_argnums=(0, 1))

  runs = {}
  for backend in ("xla", "triton"):
    p, s, step = jax.tree.map(jnp.copy, params), adamw.init(params, moments), make(backend)
    for i in range(20):
      g = jax.tree.map(lambda x, i=i: jnp.asarray(np.random.default_rng(100 + i).normal(size=x.shape) * 3, x.dtype),
                       params)
      g["blocks"]["w13"] = g["blocks"]["w13"].astype(jnp.bfloat16)
      p, s, norm = step(p, s, g, jnp.float32(1e-2 * (1 + i % 3)), jnp.float32(0.5 if i % 2 else 1.0))
    runs[backend] = (p, s, float(norm))
  (p_t, s_t, n_t), (p_x, s_x, _) = runs["triton"], runs["xla"]
  bf16 = moments == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves((s_t["mu"], s_t["nu"]))} == {jnp.dtype(moments)}
  # With bf16 moments the two backends' fp32 moments may differ in the last bit (FMA or not) and round
  # to neighbouring bf16 values. With bf16 gradients (few mantissa bits) many fp32 moments land on
  # exact bf16 ties, so such flips are common (H100: 0.19% of m after 2 steps, 0.32% after 3); each
  # lingers in m for several steps and moves its parameter by ~lr |u| 2^-8 a step. After 20 steps
  # 3% of w13's elements differed by more than 2e-5, at most by 1.3e-3 (an update is ~1e-2).
  for a, b in zip(jax.tree.leaves(p_t), jax.tree.leaves(p_x)):
    _assert_close_but_rare_flips(np.asarray(a), np.asarray(b), 2e-5 if bf16 else 1e-6, bf16)
  for a, b in zip(jax.tree.leaves((s_t["mu"], s_t["nu"])), jax.tree.leaves((s_x["mu"], s_x["nu"]))):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)   # bf16: a flip or two, at the leaf's scale
    np.testing.assert_allclose(a, b, rtol=2 ** -6 if bf16 else 2e-5, atol=2 ** -7 * np.abs(b).max() if bf16 else 1e-6)
  assert n_t == pytest.approx(math.sqrt(sum((np.asarray(x, np.float64) ** 2).sum() for x in jax.tree.leaves(p_t))),
                              rel=1e-5)
  # An independent reference for one kernel leaf and one XLA leaf: AdamW in float64.
  for path in (("embed",), ("blocks", "attn_norm")):
    theta = np.asarray(functools.reduce(lambda t, k: t[k], path, params), np.float64)
    m = v = np.zeros_like(theta)
    for i in range(20):
      g = np.random.default_rng(100 + i).normal(size=theta.shape) * 3 * (0.5 if i % 2 else 1.0)
      m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
      lam = 0.1 if path == ("embed",) else 0.0
      theta = theta - 1e-2 * (1 + i % 3) * ((m / (1 - 0.9 ** (i + 1))) / (np.sqrt(v / (1 - 0.95 ** (i + 1))) + 1e-8)
                                             + lam * theta)
      if bf16:
        m, v = _np_bf16(m), _np_bf16(v)
    got = np.asarray(functools.reduce(lambda t, k: t[k], path, p_t))
    _assert_close_but_rare_flips(got, theta, 2e-5, bf16)
