"""Tests of attention_kernel.py (Triton flash attention).

GPU tests compare O, dQ, dK, dV of flash_attention with a float32 einsum reference written here,
on the same bf16/fp16-rounded inputs and cotangent. Error = ||got - ref||_F / max(||ref||_F, 1)
(the max: at T = 1 softmax is constant and the true dQ, dK are zero). Tolerances: bf16 1e-2,
fp16 2e-3. In Triton's interpreter the kernels sit at 2e-4..4e-4 in fp16 (rounding of P and dS to
fp16 for the matmuls); bf16 has 3 fewer mantissa bits, so about 8x that, ~3e-3. CPU tests check the module imports without triton, the user
errors, and (when torch and triton are installed) the kernels in Triton's interpreter.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {"bfloat16": 1e-2, "float16": 2e-3}


def _reference(q, k, v, causal, scale):
  """float32 softmax(q k^T * scale) v on B x T x H x K arrays."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") * scale
  if causal:
    t = q.shape[1]
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v, precision="highest")


def _err(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1.0)


# (B, H, T, head_dim, causal, dtype): every seq length, head dim, mask and dtype of the issue.
SHAPES = [
    (1, 1, 1, 32, True, "bfloat16"),
    (2, 3, 17, 64, False, "float16"),
    (3, 2, 17, 128, True, "bfloat16"),
    (8, 16, 128, 32, True, "bfloat16"),
    (4, 4, 256, 128, False, "bfloat16"),
    (2, 16, 256, 64, True, "float16"),
    (2, 8, 1000, 64, True, "bfloat16"),
    (1, 2, 1000, 128, True, "float16"),
    (4, 12, 1000, 32, False, "bfloat16"),
    (1, 4, 4096, 64, True, "bfloat16"),
    (1, 1, 4096, 128, False, "bfloat16"),
    (2, 2, 300, 96, True, "bfloat16"),  # head_dim 96 (MLA's K + R) runs zero-padded to 128
]


@pytest.mark.gpu
@pytest.mark.parametrize("b,h,t,d,causal,dtype", SHAPES)
def test_forward_and_gradients_match_float32_reference(b, h, t, d, causal, dtype):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  keys = jax.random.split(jax.random.PRNGKey(1000 * t + 10 * d + causal), 4)
  q, k, v, do = (jax.random.normal(kk, (b, t, h, d), jnp.float32).astype(dtype) for kk in keys)
  scale = 1.0 / np.sqrt(d)

  @jax.jit
  def run(q, k, v, do):
    o, vjp = jax.vjp(lambda q, k, v: attention_kernel.flash_attention(q, k, v, causal=causal), q, k, v)
    return (o, *vjp(do))

  def ref(q, k, v, do):  # differentiated in float32, so its gradients are not rounded to bf16
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    o, vjp = jax.vjp(lambda q, k, v: _reference(q, k, v, causal, scale), *f32)
    return (o, *vjp(do.astype(jnp.float32)))

  got = run(q, k, v, do)
  # The reference runs on the CPU: independent of the GPU stack, and no GEMM autotuning to wait for.
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    want = jax.jit(ref)(*(jax.device_put(x, cpu) for x in (q, k, v, do)))
  assert got[0].dtype == jnp.dtype(dtype) and got[0].shape == q.shape
  for name, g, w in zip(("o", "dq", "dk", "dv"), got, want):
    assert g.dtype == jnp.dtype(dtype)
    assert np.all(np.isfinite(np.asarray(g, np.float32))), name
    err = _err(g, w)
    assert err < TOL[dtype], f"{name}: relative error {err:.2e} >= {TOL[dtype]}"


# (B, H, T, head_dim, causal): the packed-QKV + RoPE entry point over its head dims and ragged T.
ROPE_SHAPES = [(1, 1, 1, 32, True), (2, 3, 17, 16, True), (8, 16, 256, 32, True), (2, 4, 300, 64, False),
               (1, 2, 1000, 128, True)]


@pytest.mark.gpu
@pytest.mark.parametrize("b,h,t,d,causal", ROPE_SHAPES)
def test_packed_rope_entry_matches_rope_then_float32_reference(b, h, t, d, causal):
  """flash_attention_rope(qkv) = attention(rope(q), rope(k), v); its dQKV is checked against the
  float32 reference differentiated through a NumPy RoPE written here (pairs (2i, 2i+1), angle
  t * 10000^(-2i/d)), so the in-kernel transpose of RoPE is checked against independent code."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  k1, k2 = jax.random.split(jax.random.PRNGKey(t + d), 2)
  qkv = jax.random.normal(k1, (b, t, 3, h, d), jnp.float32).astype(jnp.bfloat16)
  do = jax.random.normal(k2, (b, t, h, d), jnp.float32).astype(jnp.bfloat16)
  cos, sin = model.rope_tables(t, d, 10_000.0)
  ang = np.arange(t)[:, None] * 10_000.0 ** (-np.arange(0, d, 2) / d)
  # fp32 angles drift by ~T * 1e-7 rad from float64 ones: at T = 1000 that is 1e-4.
  np.testing.assert_allclose(np.asarray(cos), np.cos(ang), atol=3e-4)

  def np_rope(x):  # x: B x T x H x D, jnp so it can be differentiated; the tables are NumPy's
    c, s_ = jnp.asarray(np.cos(ang)[None, :, None, :], jnp.float32), jnp.asarray(np.sin(ang)[None, :, None, :], jnp.float32)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x0 * c - x1 * s_, x0 * s_ + x1 * c], axis=-1).reshape(x.shape)

  def ref(qkv, do):
    qkv = qkv.astype(jnp.float32)
    o, vjp = jax.vjp(lambda x: _reference(np_rope(x[:, :, 0]), np_rope(x[:, :, 1]), x[:, :, 2], causal,
                                          1.0 / np.sqrt(d)), qkv)
    return o, vjp(do.astype(jnp.float32))[0]

  @jax.jit
  def run(qkv, do):
    o, vjp = jax.vjp(lambda x: attention_kernel.flash_attention_rope(x, cos, sin, causal=causal), qkv)
    return o, vjp(do)[0]

  got = run(qkv, do)
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    want = jax.jit(ref)(jax.device_put(qkv, cpu), jax.device_put(do, cpu))
  for name, g, w in zip(("o", "dqkv"), got, want):
    assert g.dtype == jnp.bfloat16 and g.shape == w.shape, name
    assert np.all(np.isfinite(np.asarray(g, np.float32))), name
    err = _err(g, w)
    assert err < TOL["bfloat16"], f"{name}: relative error {err:.2e}"
  for i, name in enumerate(("dq", "dk", "dv")):   # each part, so a wrong slot cannot hide
    assert _err(got[1][:, :, i], want[1][:, :, i]) < TOL["bfloat16"], name


@pytest.mark.gpu
def test_causal_output_ignores_future_keys():
  """Changing keys/values after position t must not change the output at positions <= t."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  q, k, v = (jax.random.normal(kk, (2, 300, 4, 64), jnp.bfloat16)
             for kk in jax.random.split(jax.random.PRNGKey(7), 3))
  k2, v2 = k.at[:, 150:].set(9.0), v.at[:, 150:].set(-9.0)
  f = jax.jit(attention_kernel.flash_attention)
  o1, o2 = f(q, k, v), f(q, k2, v2)
  np.testing.assert_array_equal(np.asarray(o1[:, :150], np.float32), np.asarray(o2[:, :150], np.float32))
  assert not np.allclose(np.asarray(o1[:, 150:], np.float32), np.asarray(o2[:, 150:], np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_train_step_triton_equals_xla(attention):
  """value_and_grad of model.loss_fn and one SGD step: backend 'triton' vs 'xla', bf16 compute."""
  try:
    import model  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    pytest.skip(f"model.py not importable ({e}); this test needs the model's attention dispatch")
  import jax  # pylint: disable=import-outside-toplevel
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=512, context_length=128, d_model=256, n_layers=2, n_heads=4, d_ff=704,
                  attention=attention, compute_dtype="bfloat16"))
  params = model.init_params(jax.random.PRNGKey(0), cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 129), 0, cfg.vocab_size)
  x, y = tokens[:, :-1], tokens[:, 1:]

  def step(backend):
    c = cfg.copy_and_resolve_references()
    c.attention_backend = backend

    @jax.jit
    def train_step(params):
      loss, grads = jax.value_and_grad(model.loss_fn)(params, x, y, c)
      params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
      return loss, grads, model.loss_fn(params, x, y, c)

    return train_step(params)

  (l0_t, g_t, l1_t), (l0_x, g_x, l1_x) = step("triton"), step("xla")
  assert abs(float(l0_t) - float(l0_x)) < 1e-2 * float(l0_x)
  assert abs(float(l1_t) - float(l1_x)) < 1e-2 * float(l1_x)
  assert float(l1_x) < float(l0_x)  # the step learns, so equal losses after it mean something
  flat_t, flat_x = (np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)]) for g in (g_t, g_x))
  err = np.linalg.norm(flat_t - flat_x) / np.linalg.norm(flat_x)
  assert err < 3e-2, f"gradient relative error {err:.2e}"


def _python(code):
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)


def test_imports_without_triton_and_says_what_to_do():
  """No triton/jax_triton: the module imports, available() is False, a call names the fix."""
  r = _python(
      "import sys; sys.modules['triton'] = None; sys.modules['jax_triton'] = None\n"
      "import jax.numpy as jnp, attention_kernel, errors\n"
      "assert not attention_kernel.available()\n"
      "x = jnp.zeros((1, 8, 2, 32), jnp.bfloat16)\n"
      "try:\n"
      "  attention_kernel.flash_attention(x, x, x)\n"
      "except errors.UserError as e:\n"
      "  print('USERERROR', e)\n")
  assert r.returncode == 0, r.stderr
  assert "USERERROR" in r.stdout and "attention_backend=" in r.stdout and "triton" in r.stdout


def test_import_does_not_load_triton():
  r = _python("import sys, attention_kernel; print(sorted(m for m in ('triton', 'jax_triton') "
              "if m in sys.modules))")
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("shapes,dtype,needle", [
    ([(1, 8, 2, 32)] * 3, "float32", "bfloat16"),
    ([(1, 8, 2, 32), (1, 8, 1, 32), (1, 8, 1, 32)], "bfloat16", "one shape"),
    ([(1, 8, 2, 256)] * 3, "bfloat16", "head_dim"),
])
def test_user_errors_name_the_fix(shapes, dtype, needle):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  from errors import UserError  # pylint: disable=import-outside-toplevel
  q, k, v = (jnp.zeros(s, dtype) for s in shapes)
  with pytest.raises(UserError, match=needle) as e:
    attention_kernel.flash_attention(q, k, v)
  assert "use" in str(e.value) or "set" in str(e.value) or "repeat" in str(e.value)


def test_block_config_fits_the_kernels():
  """Causal block skipping needs the outer block to be a multiple of the inner one, tiles >= 16."""
  import attention_kernel  # pylint: disable=import-outside-toplevel
  for d in attention_kernel.HEAD_DIMS:
    for t in list(range(1, 300)) + [1000, 4096, 8192, 100_000]:
      (fm, fn, _, _), (km, kn, _, _), (qm, qn, _, _) = attention_kernel.block_config(t, d)
      for blk in (fm, fn, km, kn, qm, qn):
        assert blk >= 16 and blk & (blk - 1) == 0 and blk <= max(16, 2 * t)
      assert fm % fn == 0 and kn % km == 0 and qm % qn == 0


@pytest.mark.slow
def test_kernels_in_triton_interpreter_match_numpy(triton_interpreter):
  """The Triton kernels themselves, on CPU via TRITON_INTERPRET=1, against NumPy float64."""
  assert "worst relative error" in triton_interpreter("dev_interpret_attention.py")


def _qkv_fp8_case(b=2, t=64, h=4, k=32, d=128, seed=0):
  """Inputs of flash_attention_qkv_fp8 at a small shape, w scaled as an init, the loss weights R."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  h_ND = jax.random.normal(keys[0], (b * t, d)).astype(jnp.bfloat16)
  w_DE = jax.random.normal(keys[1], (d, 3 * h * k)) * d ** -0.5
  r = jax.random.normal(keys[2], (b, t, h, k))
  qh = fp8_mlp.static_scale(jnp.ones((d,)))
  cos, sin = model.rope_tables(t, k, 10_000.0)
  return dict(h_ND=h_ND, w_DE=w_DE, r=r, qh=qh, h8=fp8_mlp.quantize_static(h_ND, qh), cos=cos, sin=sin, b=b, h=h, k=k)


def _qkv_fp8_loss(c, kernels):
  """mean(o_true * R) through flash_attention_qkv_fp8 (o_true = o s), as a function of (h, w)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel

  def loss(h_ND, w_DE):
    o, s = attention_kernel.flash_attention_qkv_fp8(h_ND, c["h8"], c["qh"], w_DE, c["h"], c["cos"], c["sin"], c["b"],
                                                    kernels=kernels)
    return jnp.mean(o.astype(jnp.float32) * s * c["r"])
  return loss


def test_qkv_fp8_backward_is_the_bf16_backward_to_fp8_rounding():
  """The XLA reference of flash_attention_qkv_fp8 (the arithmetic the kernels run): its forward is
  fp8_mlp.qkv_dot's e4m3 dot with the attention after it, bit for bit; its gradients of h and Wqkv
  are qkv_dot's bf16 backward of the same loss to e5m2's rounding of dQKV and e4m3's of h and w (~6%
  here: each e5m2 entry is within 2^-3 of its value), with no bias in scale (the bookkeeping of G,
  2^-k and 1 / (qh sw) shows in the norms' ratio: a missed factor is off by 2^15 or more). The
  cotangent is ~1e-5 an entry here, far below e5m2's smallest normal (6e-5) unless G lifts it."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  c = _qkv_fp8_case()

  def bf16_backward(h_ND, w_DE):
    raw, s = fp8_mlp.qkv_dot(h_ND, c["h8"], c["qh"], w_DE)
    qkv = raw.reshape(c["b"], -1, 3, c["h"], c["k"])
    o = attention_kernel._reference_attention(qkv, c["cos"] * s, c["sin"] * s)  # pylint: disable=protected-access
    return jnp.mean(o.astype(jnp.float32) * s * c["r"])

  l8, g8 = jax.value_and_grad(_qkv_fp8_loss(c, False), (0, 1))(c["h_ND"], c["w_DE"])
  l16, g16 = jax.value_and_grad(bf16_backward, (0, 1))(c["h_ND"], c["w_DE"])
  assert float(l8) == float(l16)
  for got, want in zip(g8, g16):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert 0.01 < np.linalg.norm(got - want) / np.linalg.norm(want) < 0.09
    assert abs(np.linalg.norm(got) / np.linalg.norm(want) - 1) < 0.02


def test_qkv_fp8_stores_clip_instead_of_overflowing():
  """A cotangent far beyond the scale's design range (x 2^20) saturates dQKV at e5m2's largest
  value: the gradients stay finite, pointing the same way, not inf or NaN."""
  import jax  # pylint: disable=import-outside-toplevel
  c = _qkv_fp8_case()
  base = jax.grad(_qkv_fp8_loss(c, False), (0, 1))(c["h_ND"], c["w_DE"])
  c["r"] = c["r"] * 2.0 ** 32
  big = jax.grad(_qkv_fp8_loss(c, False), (0, 1))(c["h_ND"], c["w_DE"])
  for b, g in zip(base, big):
    b, g = np.asarray(b, np.float64).ravel(), np.asarray(g, np.float64).ravel()
    assert np.isfinite(g).all()
    assert b @ g / (np.linalg.norm(b) * np.linalg.norm(g)) > 0.5


@pytest.mark.parametrize("where", ["output", "raw"])
def test_qkv_fp8_grads_match_float64(monkeypatch, where):
  """x Wqkv's FP8 backward dots from e5m2 d8 (dh = d8 w8^T 2^-k, dw = h8^T d8 2^-k / (qh sw)), with
  2^-k on the dot's output, or left out of dh for the norm kernel to apply (dh_raw, DH_SCALE='norm'):
  both are float64's products of the same FP8 values to bf16 / fp32 rounding."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(attention_kernel, "DH_SCALE", "output")
  rng = np.random.default_rng(0)
  n, d, e, qh, sw = 256, 32, 96, 3.0, 0.25
  d8 = jnp.asarray(rng.normal(size=(n, e)) * 300).astype(jnp.float8_e5m2)
  w8 = jnp.asarray(rng.normal(size=(d, e)) * 100).astype(jnp.float8_e4m3fn)
  h8 = jnp.asarray(rng.normal(size=(n, d)) * 100).astype(jnp.float8_e4m3fn)
  dh, dw = attention_kernel._qkv_grads_fp8(d8, d8.T, h8, qh, sw, w8, jnp.bfloat16, jnp.float32,  # pylint: disable=protected-access
                                           dh_raw=where == "raw")
  inv = 2.0 ** -attention_kernel._dqkv_log2(n)  # pylint: disable=protected-access
  if where == "raw":
    assert attention_kernel.dh_raw_mul(n) == inv
    dh = np.asarray(dh, np.float64) * inv
  d64, w64, h64 = (np.asarray(a, np.float64) for a in (d8, w8, h8))
  for got, want, tol in ((dh, d64 @ w64.T * inv, 2 ** -7), (dw, h64.T @ d64 * inv / (qh * sw), 1e-5)):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))


@pytest.mark.gpu
def test_qkv_fp8_kernels_match_the_reference():
  """flash_attention_qkv_fp8 on the GPU (the e5m2 stores of the attention's backward kernels, in
  both layouts, and cuBLASLt's FP8 dots) against its XLA reference: the same forward to bf16, the
  same gradients to the attention's own bf16 error and a few flips of e5m2 rounding between them
  (bf16 attention alone is 1e-2 from float32, test_packed_rope_entry_matches_rope_then_float32_reference)."""
  import jax  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  if not attention_kernel.available():
    pytest.skip("needs triton, jax-triton and a GPU")
  for shape in (dict(), dict(b=4, t=256, h=16, k=32, d=512), dict(b=1, t=200, h=2, k=64)):
    c = _qkv_fp8_case(**shape)
    lk, gk = jax.jit(jax.value_and_grad(_qkv_fp8_loss(c, True), (0, 1)))(c["h_ND"], c["w_DE"])
    lr, gr = jax.jit(jax.value_and_grad(_qkv_fp8_loss(c, False), (0, 1)))(c["h_ND"], c["w_DE"])
    assert abs(float(lk) - float(lr)) <= 1e-2 * abs(float(lr)) + 1e-6, (shape, float(lk), float(lr))
    for got, want in zip(gk, gr):
      got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
      assert np.linalg.norm(got - want) / np.linalg.norm(want) < 3e-2, shape
