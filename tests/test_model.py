"""model.py against independent references: NumPy transcriptions, hand counts, XLA's FLOP count."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamw
import model
from errors import UserError


def make_cfg(**overrides):
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=256, context_length=64, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                  compute_dtype="float32", kv_lora_rank=32, rope_head_dim=8))
  cfg.update(overrides)
  return cfg


@functools.lru_cache(maxsize=None)
def _cached_init(items):
  return model.init_params(jax.random.PRNGKey(0), make_cfg(**dict(items)))


def init(cfg_overrides):
  """Params for make_cfg(**cfg_overrides), built once per test session (init compiles slowly on CPU)."""
  shape_keys = {k: v for k, v in cfg_overrides.items()
                if k not in ("compute_dtype", "attention_backend", "scan_layers", "context_length")}
  return _cached_init(tuple(sorted(shape_keys.items())))


def tokens(B, T, V, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, V)


KINDS = ["mha", "mla"]


# ----------------------------------------------------------------------------- shapes, layout


@pytest.mark.parametrize("attention", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes(attention, dtype):
  cfg = make_cfg(attention=attention, compute_dtype=dtype)
  params = init(dict(attention=attention, compute_dtype=dtype))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params)), "master params must be fp32"
  assert params["embed"].shape == (256, 64) and params["final_norm"].shape == (64,)
  assert "lm_head" not in params
  for leaf in jax.tree.leaves(params["blocks"]):
    assert leaf.shape[0] == cfg.n_layers, "per-layer weights are stacked on a leading L axis"
  logits = model.forward(params, tokens(3, 17, 256), cfg)
  assert logits.shape == (3, 17, 256) and logits.dtype == jnp.float32
  loss = model.loss_fn(params, tokens(3, 17, 256), tokens(3, 17, 256, seed=2), cfg)
  assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(loss)


def test_untied_head_has_its_own_matrix():
  cfg = make_cfg(tie_embeddings=False)
  params = dict(init(dict(tie_embeddings=False)))  # a copy: the cached params stay intact
  assert params["lm_head"].shape == (64, 256)
  # The head really is lm_head: zeroing it zeroes the logits.
  params["lm_head"] = jnp.zeros_like(params["lm_head"])
  np.testing.assert_array_equal(model.forward(params, tokens(1, 8, 256), cfg), 0.0)


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("attention", KINDS)
def test_changing_token_t_never_changes_earlier_logits(attention):
  cfg = make_cfg(attention=attention)
  params = init(dict(attention=attention))
  tok = tokens(2, 24, 256)
  base = np.asarray(model.forward(params, tok, cfg))
  for t in (0, 7, 23):
    changed = tok.at[:, t].set((tok[:, t] + 1) % 256)
    out = np.asarray(model.forward(params, changed, cfg))
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-5, rtol=0)
    assert np.abs(out[:, t] - base[:, t]).max() > 1e-4, "the changed position itself must react"


# ----------------------------------------------------------------------------- components vs NumPy


def np_rope(x_THK, theta):
  """Adjacent pairs (x[2k], x[2k+1]) rotated by pos * theta^(-2k/K), written out loop by loop."""
  T, H, K = x_THK.shape
  out = np.empty_like(x_THK, dtype=np.float64)
  for pos in range(T):
    for k in range(K // 2):
      a = pos * theta ** (-2 * k / K)
      x0, x1 = x_THK[pos, :, 2 * k], x_THK[pos, :, 2 * k + 1]
      out[pos, :, 2 * k] = x0 * math.cos(a) - x1 * math.sin(a)
      out[pos, :, 2 * k + 1] = x0 * math.sin(a) + x1 * math.cos(a)
  return out


def test_rope_matches_numpy_rotation():
  x = np.random.default_rng(0).normal(size=(1, 12, 3, 16)).astype(np.float32)
  cos, sin = model.rope_tables(12, 16, 500.0)
  got = model.apply_rope(jnp.asarray(x), cos, sin)
  np.testing.assert_allclose(got[0], np_rope(x[0], 500.0), atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, 32)).astype(np.float32)
  cos, sin = model.rope_tables(64, 32, 10_000.0)

  def rotated_at(vec, pos):  # put vec at position pos of a length-64 sequence and rotate
    x = jnp.zeros((1, 64, 1, 32)).at[0, pos, 0].set(vec)
    return np.asarray(model.apply_rope(x, cos, sin))[0, pos, 0]

  def score(m, n):
    return float(rotated_at(q, m) @ rotated_at(k, n))

  for m, n in [(5, 2), (9, 9), (3, 11)]:
    for shift in (1, 17, 50):
      assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
  assert abs(score(5, 2) - score(5, 3)) > 1e-3, "different offsets must give different scores"


def test_rms_norm_matches_numpy():
  rng = np.random.default_rng(0)
  x, g = rng.normal(size=(2, 5, 16)) * 3, rng.normal(size=16)
  want = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-5) * g
  got = model.rms_norm(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32), jnp.float32)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_swiglu_matches_numpy():
  rng = np.random.default_rng(0)
  x, w1, w3, w2 = (rng.normal(size=s) for s in [(2, 5, 8), (8, 12), (8, 12), (12, 8)])
  silu = lambda z: z / (1 + np.exp(-z))
  want = (silu(x @ w1) * (x @ w3)) @ w2
  p = {"w13": jnp.asarray(np.stack([w1, w3], axis=1), jnp.float32), "w2": jnp.asarray(w2, jnp.float32)}
  got = model.swiglu(p, jnp.asarray(x, jnp.float32), jnp.float32)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def np_causal_attention(q, k, v):
  """Brute force per (b, h, t): softmax over s <= t of q.k / sqrt(K), weighted sum of v."""
  B, T, H, K = q.shape
  out = np.zeros(q.shape, np.float64)
  for b in range(B):
    for h in range(H):
      for t in range(T):
        s = np.array([q[b, t, h] @ k[b, j, h] for j in range(t + 1)]) / math.sqrt(K)
        w = np.exp(s - s.max())
        out[b, t, h] = (w / w.sum()) @ v[b, :t + 1, h]
  return out


def test_output_projection_and_its_gradients_match_numpy():
  """model.out_proj's own VJP (it orders the weight gradient's dot for XLA) computes o Wo and the
  two gradients dY Wo^T and o^T dY, as NumPy does in float64."""
  rng = np.random.default_rng(0)
  o, wo, dy = rng.standard_normal((2, 5, 3, 4)), rng.standard_normal((3, 4, 6)), rng.standard_normal((2, 5, 6))
  y, vjp = jax.vjp(model.out_proj, jnp.asarray(o, jnp.float32), jnp.asarray(wo, jnp.float32))
  do, dwo = vjp(jnp.asarray(dy, jnp.float32))
  np.testing.assert_allclose(y, np.einsum("bthk,hkd->btd", o, wo), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(do, np.einsum("btd,hkd->bthk", dy, wo), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dwo, np.einsum("bthk,btd->hkd", o, dy), rtol=1e-5, atol=1e-5)


def test_xla_attention_matches_brute_force():
  q, k, v = np.random.default_rng(0).normal(size=(3, 2, 9, 2, 8)).astype(np.float32)
  got = model.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), "xla")
  np.testing.assert_allclose(got, np_causal_attention(q, k, v), atol=1e-5)


# ----------------------------------------------------------------------------- parameter counts


def hand_count(D, L, F, V, tied=True):
  per_layer = 2 * D + 4 * D * D + 3 * D * F          # two norm gains, Q K V O, W1 W2 W3
  return V * D + L * per_layer + D + (0 if tied else D * V)


@pytest.mark.parametrize("name,D,L,H,F,V", [("tiny", 128, 4, 4, 512, 1024),
                                           ("small", 768, 12, 12, 3072, 10_000),
                                           ("speedrun", 512, 4, 16, 1344, 10_000)])
@pytest.mark.parametrize("tied", [True, False])
def test_param_counts(name, D, L, H, F, V, tied):
  cfg = make_cfg(d_model=D, n_layers=L, n_heads=H, d_ff=F, vocab_size=V, tie_embeddings=tied)
  shapes = jax.eval_shape(lambda key: model.init_params(key, cfg), jax.random.PRNGKey(0))
  assert model.count_params(shapes) == hand_count(D, L, F, V, tied), name
  if name == "small" and tied:
    assert hand_count(D, L, F, V) == 120_945_408  # 7,680,000 + 12 * 9,438,720 + 768


def test_mla_param_count():
  D, L, H, F, V, C, R = 64, 2, 4, 128, 256, 32, 8
  K = D // H
  per_layer = 2 * D + D * H * (K + R) + D * (C + R) + C + C * 2 * H * K + H * K * D + 3 * D * F
  cfg = make_cfg(attention="mla")
  assert model.count_params(model.init_params(jax.random.PRNGKey(0), cfg)) == V * D + L * per_layer + D


# ----------------------------------------------------------------------------- init and training


@pytest.mark.parametrize("tied", [True, False])
def test_untrained_loss_is_about_ln_vocab(tied):
  cfg = make_cfg(d_model=256, n_heads=8, d_ff=704, vocab_size=10_000, tie_embeddings=tied)
  params = init(dict(d_model=256, n_heads=8, d_ff=704, vocab_size=10_000, tie_embeddings=tied))
  loss = model.loss_fn(params, tokens(2, 64, 10_000), tokens(2, 64, 10_000, seed=2), cfg)
  assert abs(float(loss) - math.log(10_000)) < 0.3


def test_init_statistics_follow_cs336():
  cfg = make_cfg(d_model=128, d_ff=384, tie_embeddings=False, n_layers=4)
  p = model.init_params(jax.random.PRNGKey(0), cfg)
  trunc_std = 0.98658  # std of N(0,1) truncated at +-3
  wqkv = np.asarray(p["blocks"]["wqkv"])
  assert wqkv.std() == pytest.approx(math.sqrt(2 / (128 + 128)) * trunc_std, rel=0.02)
  assert np.abs(wqkv).max() <= 3 * math.sqrt(2 / 256) + 1e-6
  for j in range(3):  # each of Q, K, V is distributed like its own D x HK matrix
    assert wqkv[:, :, j].std() == pytest.approx(math.sqrt(2 / 256) * trunc_std, rel=0.03)
  assert np.asarray(p["blocks"]["w13"]).std() == pytest.approx(math.sqrt(2 / (128 + 384)) * trunc_std, rel=0.02)
  assert np.asarray(p["embed"]).std() == pytest.approx(trunc_std, rel=0.02)
  np.testing.assert_array_equal(p["blocks"]["attn_norm"], 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("attention", KINDS)
def test_tiny_model_overfits_a_repeated_batch(attention):
  cfg = make_cfg(attention=attention)
  params = init(dict(attention=attention))
  state, mask = adamw.init(params), adamw.decay_mask(params)
  tok = tokens(4, 33, 256)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(model.loss_fn)(params, tok[:, :-1], tok[:, 1:], cfg)
    grads, _ = adamw.clip_by_global_norm(grads, 1.0)
    params, state = adamw.update(grads, state, params, 3e-3, mask=mask)
    return params, state, loss

  first = None
  for _ in range(150):
    params, state, loss = step(params, state)
    first = float(loss) if first is None else first
  assert first > 5.0 and float(loss) < 0.5


@pytest.mark.parametrize("attention", KINDS)
def test_scan_and_unrolled_layers_agree(attention):
  cfg = make_cfg(attention=attention)
  params = init(dict(attention=attention))
  tok = tokens(2, 16, 256)
  cfg.scan_layers = True
  scanned = model.forward(params, tok, cfg)
  cfg.scan_layers = False
  np.testing.assert_allclose(model.forward(params, tok, cfg), scanned, atol=1e-5, rtol=1e-5)


def test_bf16_compute_is_close_to_fp32():
  cfg = make_cfg(vocab_size=1000)
  params = init(dict(vocab_size=1000))
  tok, tgt = tokens(2, 32, 1000), tokens(2, 32, 1000, seed=2)
  ref = model.forward(params, tok, cfg)
  ref_loss = model.loss_fn(params, tok, tgt, cfg)
  cfg.compute_dtype = "bfloat16"
  got = model.forward(params, tok, cfg)
  assert float(jnp.abs(got - ref).max()) < 0.05 * float(jnp.abs(ref).max())
  assert float(model.loss_fn(params, tok, tgt, cfg)) == pytest.approx(float(ref_loss), abs=0.02)


# ----------------------------------------------------------------------------- FLOPs


def test_flops_per_token_hand_count():
  cfg = model.default_model_config()  # the speedrun: D512 L4 H16 F1344 V10000
  matmul = 4 * (4 * 512 * 512 + 3 * 512 * 1344) + 512 * 10_000     # = 17,571,840
  assert matmul == 17_571_840
  attn = 6 * 4 * 256 * 512                                          # causal QK^T + PV, fwd + bwd
  assert model.flops_per_token(cfg, 256) == 6 * matmul + attn == 108_576_768


@pytest.mark.slow
@pytest.mark.parametrize("attention", KINDS)
def test_flops_per_token_matches_xla_count(attention):
  # XLA counts the FLOPs of the compiled forward + backward. Its attention is the full T x T
  # (masked after), i.e. twice our causal term; the rest must agree up to elementwise work.
  cfg = make_cfg(attention=attention, d_model=128, n_heads=4, d_ff=384, vocab_size=512,
                 context_length=128, scan_layers=False)  # cost analysis counts a scan body once
  B, T = 2, 128
  params = model.init_params(jax.random.PRNGKey(0), cfg)
  tok = jnp.zeros((B, T), jnp.int32)
  compiled = jax.jit(jax.grad(functools.partial(model.loss_fn, cfg=cfg))).lower(params, tok, tok).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  K = 128 // 4
  qk = K + cfg.rope_head_dim if attention == "mla" else K
  causal_attn = 3 * cfg.n_layers * T * 4 * (qk + K)
  if attention == "mla":  # V is zero-padded from K to K+R wide for the backends: PV over R more dims
    causal_attn += 6 * cfg.n_layers * T * 4 * cfg.rope_head_dim
  xla_per_token = cost["flops"] / (B * T)
  assert model.flops_per_token(cfg, T) + causal_attn == pytest.approx(xla_per_token, rel=0.03)


# ----------------------------------------------------------------------------- errors, backends


def test_user_errors_name_the_fix():
  with pytest.raises(UserError, match="n_heads"):
    model.init_params(jax.random.PRNGKey(0), make_cfg(n_heads=5))
  with pytest.raises(UserError, match="attention"):
    model.init_params(jax.random.PRNGKey(0), make_cfg(attention="gqa"))
  cfg = make_cfg()
  params = init(dict())
  with pytest.raises(UserError, match="context_length"):
    model.forward(params, tokens(1, 65, 256), cfg)
  cfg.attention_backend = "flash"
  with pytest.raises(UserError, match="attention_backend"):
    model.forward(params, tokens(1, 8, 256), cfg)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU error message")
def test_cudnn_on_cpu_says_it_needs_a_gpu():
  cfg = make_cfg(attention_backend="cudnn", compute_dtype="bfloat16")
  params = init(dict(attention_backend="cudnn", compute_dtype="bfloat16"))
  with pytest.raises(UserError, match="GPU"):
    model.forward(params, tokens(1, 8, 256), cfg)


GPU_BACKENDS = [("cudnn", None), ("triton", "attention_kernel"), ("cuda", "attention_cuda")]


@pytest.mark.gpu
@pytest.mark.parametrize("backend,module", GPU_BACKENDS)
def test_gpu_backend_agrees_with_xla(backend, module):
  if module is not None:
    pytest.importorskip(module)
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 256, 8, 64), jnp.bfloat16) for i in range(3))
  ref = model.attention(q, k, v, "xla").astype(jnp.float32)
  got = model.attention(q, k, v, backend).astype(jnp.float32)
  np.testing.assert_allclose(got, ref, atol=2e-2)
  if backend == "cuda":
    return  # forward-only kernel
  loss = lambda bk: lambda q, k, v: jnp.sum(model.attention(q, k, v, bk).astype(jnp.float32) ** 2)
  g_ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  g_got = jax.grad(loss(backend), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_got, g_ref):
    np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), atol=0.1, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("attention", KINDS)
def test_gpu_model_with_cudnn_matches_xla(attention):
  cfg = make_cfg(attention=attention, compute_dtype="bfloat16", d_model=256, n_heads=4, vocab_size=1000)
  params = init(dict(attention=attention, compute_dtype="bfloat16", d_model=256, n_heads=4, vocab_size=1000))
  tok, tgt = tokens(4, 64, 1000), tokens(4, 64, 1000, seed=2)
  ref = model.loss_fn(params, tok, tgt, cfg)
  cfg.attention_backend = "cudnn"
  assert float(model.loss_fn(params, tok, tgt, cfg)) == pytest.approx(float(ref), abs=0.01)


def np_cross_entropy(logits, targets):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, targets[..., None], -1).mean()


def test_loss_matches_numpy_cross_entropy():
  cfg = make_cfg()
  params = init(dict())
  tok, tgt = tokens(2, 16, 256), tokens(2, 16, 256, seed=2)
  logits = np.asarray(model.forward(params, tok, cfg), np.float64)
  want = np_cross_entropy(logits, np.asarray(tgt))
  assert float(model.loss_fn(params, tok, tgt, cfg)) == pytest.approx(want, rel=1e-5)
  # Logits in the thousands (exp overflows fp32): logsumexp must keep the loss finite and exact.
  hot = dict(params, final_norm=params["final_norm"] * 3000.0)
  logits = np.asarray(model.forward(hot, tok, cfg), np.float64)
  assert np.abs(logits).max() > 200
  want = np_cross_entropy(logits, np.asarray(tgt))
  assert float(model.loss_fn(hot, tok, tgt, cfg)) == pytest.approx(want, rel=1e-4)


def test_loss_gradient_matches_finite_differences():
  # The head + cross-entropy has a hand-written backward (model.py); check it numerically.
  from jax.test_util import check_grads  # pylint: disable=import-outside-toplevel
  h, w = (jax.random.normal(jax.random.PRNGKey(i), s) for i, s in enumerate([(2, 3, 8), (11, 8)]))
  tgt = jax.random.randint(jax.random.PRNGKey(5), (2, 3), 0, 11)
  f = lambda h, w: model._head_cross_entropy("btd,vd->btv", h, w, tgt)  # pylint: disable=protected-access
  check_grads(f, (h, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  f_untied = lambda h, w: model._head_cross_entropy("btd,dv->btv", h, w.T, tgt)  # pylint: disable=protected-access
  check_grads(f_untied, (h, w), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.slow
def test_bf16_gradients_are_close_to_fp32():
  cfg = make_cfg(vocab_size=1000)
  params = init(dict(vocab_size=1000))
  tok, tgt = tokens(2, 32, 1000), tokens(2, 32, 1000, seed=2)
  ref = jax.grad(model.loss_fn)(params, tok, tgt, cfg)
  cfg.compute_dtype = "bfloat16"
  got = jax.grad(model.loss_fn)(params, tok, tgt, cfg)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got))
  for name in ("embed", "final_norm"):
    err = float(jnp.linalg.norm(got[name] - ref[name]) / jnp.linalg.norm(ref[name]))
    assert err < 0.05, name
  err = adamw.global_norm(jax.tree.map(jnp.subtract, got, ref)) / adamw.global_norm(ref)
  assert float(err) < 0.05


# ----------------------------------------------------------------------------- decode.py: caches, MLA, DSA

import decode  # noqa: E402  (the inference path; its math is checked against model.forward and NumPy)


def _fwd(params, tok, cfg):
  return jax.jit(lambda p, t: model.forward(p, t, cfg))(params, tok)


def _full(params, cfg, kind, tok, top_k=0):
  return jax.jit(lambda p, t: decode.full_logits(p, cfg, kind, t, top_k))(params, tok)


def _cached_logits(params, cfg, kind, tok_BT, n_prefill, S, top_k=0, pad_B=None):
  """Prefill n_prefill tokens, then feed the rest one at a time: logits of every position."""
  B, T = tok_BT.shape
  pad_B = jnp.zeros((B,), jnp.int32) if pad_B is None else pad_B
  ext = jax.jit(lambda p, c, t, s: decode.extend(p, cfg, kind, c, t, s, pad_B, top_k))  # one compile per T
  cache = decode.init_cache(params, cfg, kind, B, S)
  logits, cache = ext(params, cache, tok_BT[:, :n_prefill], 0)
  out = [logits]
  for t in range(n_prefill, T):
    logits, cache = ext(params, cache, tok_BT[:, t:t + 1], t)
    out.append(logits)
  return jnp.concatenate(out, axis=1)


@pytest.mark.parametrize("attention", KINDS)
def test_kv_cache_decode_equals_full_recompute(attention):
  """MHA: full K/V cache; MLA: absorbed latent cache (never builds per-head K, V) vs model.forward."""
  cfg = make_cfg(attention=attention)
  params = init(dict(attention=attention))
  tok = tokens(2, 14, 256)
  ip, kind = decode.prepare(params, cfg)
  assert kind == attention
  want = _fwd(params, tok, cfg)
  np.testing.assert_allclose(_cached_logits(ip, cfg, kind, tok, 7, 20), want, atol=2e-5, rtol=1e-5)


def test_native_mla_cache_holds_only_the_latent_and_rope_key():
  cfg = make_cfg(attention="mla")
  shapes = decode.cache_shapes(cfg, "mla", B=3, S=50)
  assert shapes == {"c": (2, 3, 50, 32), "kr": (2, 3, 50, 8)}
  assert decode.cache_bytes_per_token_layer(cfg, "mla") == (32 + 8) * 2
  assert decode.cache_bytes_per_token_layer(cfg, "mha") == 2 * 64 * 2


@pytest.mark.parametrize("attention", KINDS)
def test_left_padded_rows_equal_unpadded_sequences(attention):
  """A row left-padded by p slots gives the logits of the same tokens alone (positions restart at 0)."""
  cfg = make_cfg(attention=attention)
  params = init(dict(attention=attention))
  tok = tokens(1, 12, 256)
  want = _fwd(params, tok, cfg)
  padded = jnp.concatenate([jnp.full((1, 5), 7, tok.dtype), tok], axis=1)
  ip, kind = decode.prepare(params, cfg)
  got = _cached_logits(ip, cfg, kind, padded, 10, 20, pad_B=jnp.array([5], jnp.int32))
  np.testing.assert_allclose(got[:, 5:], want, atol=2e-5, rtol=1e-5)


def test_full_rank_svd_conversion_equals_the_mha_model():
  cfg = make_cfg()
  params = init({})
  tok = tokens(2, 14, 256)
  ip, kind = decode.prepare(params, cfg, use_mla=True, mla_rank=cfg.d_model)
  assert kind == "mla_svd" and decode.cache_shapes(cfg, kind, 2, 20, rank=64)["c"] == (2, 2, 20, 64)
  want = _fwd(params, tok, cfg)
  np.testing.assert_allclose(_cached_logits(ip, cfg, kind, tok, 8, 20), want, atol=2e-5, rtol=1e-5)


def test_svd_conversion_is_the_best_rank_r_approximation_of_wk_wv():
  """W_down W_up equals NumPy's truncated SVD of [W_k | W_v]; the error shrinks as the rank grows."""
  cfg = make_cfg()
  params = init({})
  w = np.asarray(params["blocks"]["wqkv"][0, :, 1:]).reshape(64, -1)
  errs = []
  for r in (8, 32, 64):
    ip = decode.svd_to_mla(params, cfg, r)
    approx = np.asarray(ip["blocks"]["wdown"][0]) @ np.asarray(ip["blocks"]["wup"][0]).reshape(r, -1)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(approx, (u[:, :r] * s[:r]) @ vt[:r], atol=1e-5)
    errs.append(np.linalg.norm(approx - w))
  assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4
  with pytest.raises(UserError, match="mla_rank"):
    decode.svd_to_mla(params, cfg, 65)


def test_low_rank_conversion_changes_the_logits():
  cfg = make_cfg()
  params = init({})
  tok = tokens(1, 16, 256)
  ip, kind = decode.prepare(params, cfg, use_mla=True, mla_rank=4)
  assert np.abs(_full(ip, cfg, kind, tok) - _fwd(params, tok, cfg)).max() > 1e-3


@pytest.mark.parametrize("attention", KINDS)
def test_dsa_with_k_at_least_the_context_equals_dense(attention):
  cfg = make_cfg(attention=attention)
  params = init(dict(attention=attention))
  tok = tokens(2, 16, 256)
  ip, kind = decode.prepare(params, cfg)
  want = _fwd(params, tok, cfg)
  for k in (16, 40):
    np.testing.assert_allclose(_full(ip, cfg, kind, tok, k), want, atol=2e-5, rtol=1e-5)
  assert np.abs(_full(ip, cfg, kind, tok, 2) - want).max() > 1e-3


def test_dsa_exact_selection_keeps_the_true_top_k_keys():
  """probs(): nonzero exactly on each (head, query)'s k best causal keys; softmax over them (NumPy)."""
  rng = np.random.default_rng(0)
  B, H, T, k = 2, 3, 10, 4
  s = rng.normal(size=(B, H, T, T)).astype(np.float32)
  keep = np.tril(np.ones((T, T), bool))[None].repeat(B, 0)
  got = np.asarray(decode.probs(jnp.asarray(s), jnp.asarray(keep), None, k))
  for b in range(B):
    for h in range(H):
      for t in range(T):
        n = min(k, t + 1)
        top = np.argsort(-s[b, h, t, :t + 1])[:n]   # brute force: the n largest causal scores
        want = np.zeros(T)
        e = np.exp(s[b, h, t, top] - s[b, h, t, top].max())
        want[top] = e / e.sum()
        np.testing.assert_allclose(got[b, h, t], want, atol=1e-6)


def test_dsa_indexer_selection_is_shared_by_heads():
  rng = np.random.default_rng(1)
  s = rng.normal(size=(1, 2, 1, 6)).astype(np.float32)
  sel = np.array([[[[0.0, 5.0, 1.0, 4.0, 2.0, 3.0]]]], np.float32)   # keys 1, 3 chosen for both heads
  got = np.asarray(decode.probs(jnp.asarray(s), jnp.ones((1, 1, 6), bool), jnp.asarray(sel), 2))
  for h in range(2):
    e = np.exp(s[0, h, 0, [1, 3]])
    np.testing.assert_allclose(got[0, h, 0, [1, 3]], e / e.sum(), atol=1e-6)
    assert np.count_nonzero(got[0, h, 0]) == 2


def test_dsa_decode_with_cache_equals_full_sequence():
  """Per-query selection: prefill + token-by-token DSA equals DSA over the whole sequence."""
  cfg = make_cfg()
  params = init({})
  tok = tokens(2, 20, 256)
  want = _full(params, cfg, "mha", tok, 5)
  np.testing.assert_allclose(_cached_logits(params, cfg, "mha", tok, 7, 24, top_k=5), want, atol=2e-5)


def test_indexer_scores_match_numpy():
  cfg = make_cfg()
  ip = jax.tree.map(lambda a: a[0], decode.init_indexer(jax.random.PRNGKey(3), cfg, n_heads=2, dim=8))
  rng = np.random.default_rng(2)
  h = rng.normal(size=(1, 5, 64)).astype(np.float32)
  pos = np.arange(5)[None]
  k = np.asarray(decode.rope_at(jnp.asarray(h @ np.asarray(ip["wk"]))[:, :, None], pos, cfg.rope_theta))[:, :, 0]
  got = np.asarray(decode.index_scores(ip, jnp.asarray(h), jnp.asarray(k)[:, :, None], pos, cfg.rope_theta))
  q = np.asarray(decode.rope_at(jnp.asarray(np.einsum("btd,dgi->btgi", h, ip["wq"])), pos, cfg.rope_theta))
  w = np.einsum("btd,dg->btg", h, ip["ww"]) / np.sqrt(2)
  want = np.einsum("btg,btgs->bts", w, np.maximum(np.einsum("btgi,bsi->btgs", q, k) / np.sqrt(8), 0))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_rope_at_positions_matches_numpy_rotation():
  x = np.random.default_rng(4).normal(size=(1, 12, 2, 8)).astype(np.float32)
  got = decode.rope_at(jnp.asarray(x[:, 3:]), jnp.arange(3, 12)[None], 500.0)
  np.testing.assert_allclose(got[0], np_rope(x[0], 500.0)[3:], atol=1e-5)


@pytest.mark.slow
def test_indexer_distillation_lowers_the_kl():
  cfg = make_cfg(context_length=32)
  params = init({})
  train_N = np.asarray(tokens(1, 4000, 256, seed=5))[0]
  tok = jnp.asarray(train_N[:32 * 4].reshape(4, 32))
  before = decode.indexer_kl(decode.init_indexer(jax.random.key(0), cfg), params, cfg, "mha", tok)
  ix = decode.train_indexer(params, cfg, "mha", train_N, 60, batch_size=4, lr=1e-2, log=None)
  after = decode.indexer_kl(ix, params, cfg, "mha", tok)
  assert float(after) < 0.7 * float(before)


# ----------------------------------------------------------------------------- tokens-to-target options

OPTIONS = ("qk_norm", "zero_init_out", "logit_softcap", "parallel_block")


def _np_rms(x, g):
  return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-5) * g


def _randomised(params, seed=7):
  """A copy with every weight (gains and zero-initialised matrices included) redrawn at random, so a
  gain or projection that the code forgot to apply shows up in the output."""
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree.unflatten(treedef, [jnp.asarray(
      1.0 + 0.3 * rng.normal(size=a.shape) if "norm" in jax.tree_util.keystr(path)
      else 0.15 * rng.normal(size=a.shape), jnp.float32) for path, a in leaves])


def test_options_default_off_and_add_no_params():
  cfg = model.default_model_config()
  assert (cfg.qk_norm, cfg.zero_init_out, cfg.logit_softcap, cfg.parallel_block) == (False, False, 0.0, False)
  params = init({})
  assert set(params["blocks"]) == {"attn_norm", "wqkv", "wo", "mlp_norm", "w13", "w2"}
  # A config saved before the options existed (an older checkpoint's config.json) means all off.
  old = make_cfg()
  old = type(old)({k: v for k, v in old.to_dict().items() if k not in OPTIONS})
  fresh = model.init_params(jax.random.PRNGKey(0), old)
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  tok, tgt = tokens(2, 16, 256), tokens(2, 16, 256, seed=2)
  np.testing.assert_array_equal(model.forward(params, tok, old), model.forward(params, tok, make_cfg()))
  assert float(model.loss_fn(params, tok, tgt, old)) == float(model.loss_fn(params, tok, tgt, make_cfg()))


def test_option_errors_name_the_fix():
  with pytest.raises(UserError, match="qk_norm=False.*attention=mha"):
    model.init_params(jax.random.PRNGKey(0), make_cfg(attention="mla", qk_norm=True))
  with pytest.raises(UserError, match="logit_softcap"):
    model.forward(init({}), tokens(1, 4, 256), make_cfg(logit_softcap=-1.0))


def test_qk_norm_gains_are_per_layer_head_dim_vectors_without_weight_decay():
  params = init(dict(qk_norm=True))
  for name in ("q_norm", "k_norm"):
    assert params["blocks"][name].shape == (2, 16)     # L x K
    np.testing.assert_array_equal(params["blocks"][name], 1.0)
    assert not adamw.decay_mask(params)["blocks"][name]
  # Everything else is the default init, draw for draw: an A/B run differs only by the option.
  for name, a in init({})["blocks"].items():
    np.testing.assert_array_equal(params["blocks"][name], a)


def np_one_block_lm(p, tok, theta, qk_norm, parallel=False):
  """NumPy transcription of a one-layer tied model, with the q/k RMSNorm before RoPE when qk_norm;
  parallel: x + attn(n(x)) + mlp(n(x)), both halves on the one attn_norm."""
  b = {k: np.asarray(v, np.float64)[0] for k, v in p["blocks"].items()}
  embed = np.asarray(p["embed"], np.float64)
  x = embed[np.asarray(tok)]
  h_in = _np_rms(x, b["attn_norm"])
  qkv = np.einsum("btd,dshk->btshk", h_in, b["wqkv"])
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  if qk_norm:
    q, k = _np_rms(q, b["q_norm"]), _np_rms(k, b["k_norm"])
  q = np.stack([np_rope(qi, theta) for qi in q])
  k = np.stack([np_rope(ki, theta) for ki in k])
  x = x + np.einsum("bthk,hkd->btd", np_causal_attention(q, k, v), b["wo"])
  h = h_in if parallel else _np_rms(x, b["mlp_norm"])
  gate, up = h @ b["w13"][:, 0], h @ b["w13"][:, 1]
  x = x + (gate / (1 + np.exp(-gate)) * up) @ b["w2"]
  return _np_rms(x, np.asarray(p["final_norm"], np.float64)) @ embed.T


@pytest.mark.parametrize("scan_layers", [False, True])
def test_qk_norm_forward_matches_numpy(scan_layers):
  cfg = make_cfg(qk_norm=True, n_layers=1, scan_layers=scan_layers)
  params = _randomised(model.init_params(jax.random.PRNGKey(0), cfg))
  tok = tokens(2, 9, 256)
  want = np_one_block_lm(params, tok, cfg.rope_theta, qk_norm=True)
  np.testing.assert_allclose(model.forward(params, tok, cfg), want, atol=2e-4, rtol=1e-4)
  # The reference can tell: without the norm it is far from the model.
  assert np.abs(np_one_block_lm(params, tok, cfg.rope_theta, qk_norm=False) - want).max() > 1e-2


@pytest.mark.parametrize("scan_layers", [False, True])
def test_parallel_block_forward_matches_numpy(scan_layers):
  cfg = make_cfg(parallel_block=True, n_layers=1, scan_layers=scan_layers)
  params = _randomised(model.init_params(jax.random.PRNGKey(0), cfg))
  tok = tokens(2, 9, 256)
  want = np_one_block_lm(params, tok, cfg.rope_theta, qk_norm=False, parallel=True)
  np.testing.assert_allclose(model.forward(params, tok, cfg), want, atol=2e-4, rtol=1e-4)
  # The reference can tell: the sequential block on the same gains is far from it.
  seq = {**params, "blocks": {**params["blocks"], "mlp_norm": params["blocks"]["attn_norm"]}}
  assert np.abs(np_one_block_lm(seq, tok, cfg.rope_theta, qk_norm=False) - want).max() > 1e-2


def test_parallel_block_has_one_norm_a_layer_and_the_same_draws():
  params = init(dict(parallel_block=True))
  assert set(params["blocks"]) == {"attn_norm", "wqkv", "wo", "w13", "w2"}
  for name, a in init({})["blocks"].items():   # an A/B run differs only by the block's form
    if name != "mlp_norm":
      np.testing.assert_array_equal(params["blocks"][name], a)
  with pytest.raises(UserError, match="parallel_block.*norm_backend=xla"):
    model.forward(params, tokens(1, 4, 256), make_cfg(parallel_block=True, norm_backend="triton"))


@pytest.mark.parametrize("tied", [True, False])
def test_zero_init_out_blocks_start_as_identity(tied):
  cfg = make_cfg(zero_init_out=True, tie_embeddings=tied)
  params = init(dict(zero_init_out=True, tie_embeddings=tied))
  np.testing.assert_array_equal(params["blocks"]["wo"], 0.0)
  np.testing.assert_array_equal(params["blocks"]["w2"], 0.0)
  default = init(dict(tie_embeddings=tied))
  np.testing.assert_array_equal(params["blocks"]["wqkv"], default["blocks"]["wqkv"])
  np.testing.assert_array_equal(params["embed"], default["embed"])
  # At init the logits are the embedding -> final RMSNorm -> head alone (NumPy).
  tok = tokens(2, 12, 256)
  x = np.asarray(params["embed"], np.float64)[np.asarray(tok)]
  head = np.asarray(params["embed"]).T if tied else np.asarray(params["lm_head"])
  want = _np_rms(x, np.asarray(params["final_norm"])) @ head
  np.testing.assert_allclose(model.forward(params, tok, cfg), want, atol=1e-5, rtol=1e-5)
  # ... and it still learns: the zero projections get a gradient at the first step.
  g = jax.grad(model.loss_fn)(params, tok, tokens(2, 12, 256, seed=2), cfg)
  assert float(jnp.abs(g["blocks"]["wo"]).max()) > 1e-6 and float(jnp.abs(g["blocks"]["w2"]).max()) > 1e-6


def _plain_softcap_loss(params, tok, tgt, cfg, cap):
  """The same loss with no custom_vjp: plain jnp, differentiated by JAX itself."""
  h = model.hidden(params, tok, cfg)
  w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  z = cap * jnp.tanh((h @ w) / cap)
  return jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, tgt[..., None], axis=-1)[..., 0])


@pytest.mark.parametrize("tied", [True, False])
def test_logit_softcap_loss_and_gradient_match_plain_autodiff(tied):
  cap = 1.5
  cfg = make_cfg(tie_embeddings=tied, logit_softcap=cap)
  params = dict(init(dict(tie_embeddings=tied)))
  params["final_norm"] = params["final_norm"] * 4.0   # logits of several caps: tanh well into saturation
  tok, tgt = tokens(2, 16, 256), tokens(2, 16, 256, seed=2)
  raw = np.asarray(model.forward(params, tok, make_cfg(tie_embeddings=tied)), np.float64)
  assert np.abs(raw).max() > 3 * cap
  got = np.asarray(model.forward(params, tok, cfg))
  np.testing.assert_allclose(got, cap * np.tanh(raw / cap), atol=1e-5)
  assert np.abs(got).max() <= cap
  want_loss = np_cross_entropy(cap * np.tanh(raw / cap), np.asarray(tgt))
  assert float(model.loss_fn(params, tok, tgt, cfg)) == pytest.approx(want_loss, rel=1e-5)
  g_got = jax.grad(model.loss_fn)(params, tok, tgt, cfg)
  g_want = jax.grad(_plain_softcap_loss)(params, tok, tgt, cfg, cap)
  for path, a in jax.tree_util.tree_leaves_with_path(g_got):
    b = functools.reduce(lambda t, k: t[k.key], path, g_want)
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
  # The tanh derivative matters here: the uncapped gradient is far from it.
  g_raw = jax.grad(model.loss_fn)(params, tok, tgt, make_cfg(tie_embeddings=tied))
  assert float(adamw.global_norm(jax.tree.map(jnp.subtract, g_raw, g_want))) > 0.1 * float(adamw.global_norm(g_want))


@pytest.mark.slow
def test_logit_softcap_bf16_loss_is_close_to_fp32():
  cfg = make_cfg(vocab_size=1000, logit_softcap=5.0)
  params = init(dict(vocab_size=1000))
  tok, tgt = tokens(2, 32, 1000), tokens(2, 32, 1000, seed=2)
  ref = float(model.loss_fn(params, tok, tgt, cfg))
  g_ref = jax.grad(model.loss_fn)(params, tok, tgt, cfg)
  cfg.compute_dtype = "bfloat16"
  assert float(model.loss_fn(params, tok, tgt, cfg)) == pytest.approx(ref, abs=0.02)
  g = jax.grad(model.loss_fn)(params, tok, tgt, cfg)
  err = adamw.global_norm(jax.tree.map(jnp.subtract, g, g_ref)) / adamw.global_norm(g_ref)
  assert float(err) < 0.05


@pytest.mark.parametrize("options", [dict(qk_norm=True), dict(logit_softcap=2.0),
                                     dict(qk_norm=True, zero_init_out=True, logit_softcap=2.0)])
def test_kv_cache_decode_with_options_equals_forward(options):
  # zero_init_out only changes the init, so it runs with the others on random (nonzero) wo, w2.
  cfg = make_cfg(**options)
  params = _randomised(model.init_params(jax.random.PRNGKey(0), cfg))   # random gains, nonzero wo/w2
  tok = tokens(2, 14, 256)
  want = _fwd(params, tok, cfg)
  ip, kind = decode.prepare(params, cfg)
  np.testing.assert_allclose(_cached_logits(ip, cfg, kind, tok, 7, 20), want, atol=2e-5, rtol=1e-5)
  if len(options) == 3:  # the full-rank SVD-converted latent cache too (keys rebuilt, normed, rotated)
    ip, kind = decode.prepare(params, cfg, use_mla=True, mla_rank=cfg.d_model)
    np.testing.assert_allclose(_cached_logits(ip, cfg, kind, tok, 7, 20), want, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- residual dtype


def test_bf16_residual_stream_rounds_after_every_add_and_nowhere_else():
  """residual_dtype='bfloat16': the reference is the fp32 model with the stream rounded to bf16 after
  the embedding lookup and after each residual add (written here with the model's own sublayers)."""
  cfg = make_cfg(residual_dtype="bfloat16")
  params = init({})
  tok = tokens(2, 32, cfg.vocab_size)
  rope = model.rope_tables(32, cfg.d_model // cfg.n_heads, cfg.rope_theta)
  f32, bf = jnp.float32, jnp.bfloat16
  x = params["embed"][tok].astype(bf)
  for i in range(cfg.n_layers):
    p = jax.tree.map(lambda a, i=i: a[i], params["blocks"])
    x = (x.astype(f32) + model._mha(p, model.rms_norm(x, p["attn_norm"], f32), rope, cfg, f32)).astype(bf)  # pylint: disable=protected-access
    x = (x.astype(f32) + model.swiglu(p, model.rms_norm(x, p["mlp_norm"], f32), f32)).astype(bf)
  want = jnp.einsum("btd,vd->btv", model.rms_norm(x, params["final_norm"], f32), params["embed"])
  got = model.forward(params, tok, cfg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  fp32 = model.forward(params, tok, make_cfg())
  assert 1e-4 < float(jnp.max(jnp.abs(got - fp32))) < 0.1   # the rounding is there, and small
  with pytest.raises(UserError, match="residual_dtype"):
    model.forward(params, tok, make_cfg(residual_dtype="float16"))


def test_unknown_dh_scale_names_the_choices(monkeypatch):
  """attention_kernel.DH_SCALE is a module setting: a value it does not know (the removed 'operand')
  is a UserError naming the two it has, not a silent fall back to one of them."""
  import attention_kernel  # pylint: disable=import-outside-toplevel
  cfg = model.default_model_config()
  cfg.update(dict(mlp_fp8=True, attn_fp8=True, attn_fp8_dqkv=True, norm_backend="triton", d_model=64, n_heads=2,
                  d_ff=160, vocab_size=64, n_layers=1))
  params = model.init_params(jax.random.PRNGKey(0), cfg)
  monkeypatch.setattr(attention_kernel, "DH_SCALE", "operand")
  with pytest.raises(UserError, match=r"DH_SCALE='operand' is unknown: use 'norm'.*'output'"):
    model._hidden_fused_norms(params, jnp.zeros((1, 8, 64), jnp.bfloat16), None, cfg)  # pylint: disable=protected-access
