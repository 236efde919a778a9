"""muon.py against NumPy: Newton-Schulz vs the SVD, one optimizer step vs a float64 transcription of
Jordan (2024) / Moonshot (2025), the Muon/AdamW split of the model's leaves, and train.py with
optimizer='muon' (learns, resumes to the same state)."""
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import model
import muon
import train
from errors import UserError
from tests.test_train import _config, _losses, _write_tokens

A, B, C = 3.4445, -4.7750, 2.0315


def np_newton_schulz(g, steps=5):
  """Jordan's zeropower_via_newtonschulz5 in float64: normalise, iterate on the smaller Gram side."""
  x = g / (np.linalg.norm(g) + 1e-7)
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  for _ in range(steps):
    a = x @ x.T
    x = A * x + (B * a + C * a @ a) @ x
  return x.T if tall else x


def quintic(s, steps=5):
  """The scalar map NS5 applies to each singular value of the Frobenius-normalised matrix."""
  for _ in range(steps):
    s = A * s + B * s ** 3 + C * s ** 5
  return s


def random_orthogonal(rng, n, k):
  q, _ = np.linalg.qr(rng.normal(size=(n, k)))
  return q


# ----------------------------------------------------------------------------- Newton-Schulz


@pytest.mark.parametrize("m,n", [(24, 40), (40, 24), (32, 32)])
def test_newton_schulz_is_the_svd_polar_factor_with_singular_values_in_the_band(m, n):
  """G = U diag(s) V^T; NS5(G) must be U diag(p(s/|s|)) V^T: the singular vectors of G, and singular
  values in Jordan's published band (~0.7 to ~1.2) for a condition number up to 100."""
  rng = np.random.default_rng(m * n)
  r = min(m, n)
  g_NMN, want_NMN, uv_NMN = [], [], []
  for _ in range(3):
    u, v = random_orthogonal(rng, m, r), random_orthogonal(rng, n, r)
    s = np.exp(rng.uniform(np.log(0.01), 0.0, r))
    g_NMN.append(u @ np.diag(s) @ v.T)
    want_NMN.append(u @ np.diag(quintic(s / np.linalg.norm(s))) @ v.T)
    uv_NMN.append(u @ v.T)
  got = np.asarray(muon.newton_schulz(jnp.asarray(np.stack(g_NMN), jnp.float32)), np.float64)
  for o, want, uv in zip(got, want_NMN, uv_NMN):
    np.testing.assert_allclose(o, want, atol=2e-5)
    sv = np.linalg.svd(o, compute_uv=False)
    assert 0.67 < sv.min() and sv.max() < 1.21
    assert np.linalg.norm(o - uv) / np.linalg.norm(uv) < 0.3  # close to U V^T, not equal by design


def test_newton_schulz_of_a_gaussian_matrix_and_of_its_transpose():
  g = np.random.default_rng(0).normal(size=(48, 128)).astype(np.float32)
  o = np.asarray(muon.newton_schulz(jnp.asarray(g[None])))[0]
  o_t = np.asarray(muon.newton_schulz(jnp.asarray(g.T[None])))[0]
  np.testing.assert_allclose(o, np_newton_schulz(g.astype(np.float64)), atol=2e-5)
  np.testing.assert_allclose(o_t, o.T, atol=2e-5)
  sv = np.linalg.svd(o, compute_uv=False)
  assert 0.67 < sv.min() and sv.max() < 1.21


def test_bfloat16_newton_schulz_keeps_the_singular_vectors_and_the_band():
  """muon_ns_dtype='bfloat16': the same iteration with bf16 matmuls. Its rounding moves the result
  ~5% away from the exact NS5 iterate (fp32 stays within 1e-5), so what must hold is what Muon
  uses: in the basis of G's SVD (NumPy) the result is still nearly diagonal, i.e. it keeps G's
  singular vectors, with singular values in the band and as close to U V^T as the exact iterate."""
  g = np.random.default_rng(1).normal(size=(64, 160)).astype(np.float32)
  u, _, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  exact = np_newton_schulz(g.astype(np.float64))
  o = np.asarray(muon.newton_schulz(jnp.asarray(g[None]), dtype=jnp.bfloat16))[0]
  assert o.dtype == np.float32
  o = o.astype(np.float64)
  assert np.linalg.norm(o - exact) / np.linalg.norm(exact) > 1e-3  # bf16 really ran
  m = u.T @ o @ vt.T  # diagonal for a matrix with G's singular vectors
  assert np.linalg.norm(m - np.diag(np.diag(m))) / np.linalg.norm(m) < 0.06
  sv = np.linalg.svd(o, compute_uv=False)
  assert 0.6 < sv.min() and sv.max() < 1.25
  uv = u @ vt
  assert abs(np.linalg.norm(o - uv) - np.linalg.norm(exact - uv)) / np.linalg.norm(uv) < 0.05


def test_unknown_muon_ns_dtype_is_a_user_error_naming_the_choices(data_dir, tmp_path):
  with pytest.raises(UserError, match=r"muon_ns_dtype='float16' is unknown.*float32 or bfloat16"):
    train.train(_config(data_dir, optimizer="muon", muon_ns_dtype="float16"), str(tmp_path))


# ----------------------------------------------------------------------------- which leaves


def _model_cfg(**kw):
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64, compute_dtype="float32",
                  **kw))
  return cfg


def test_hidden_matrices_go_to_muon_and_the_rest_to_adamw():
  views = muon.matrix_views(model.init_params(jax.random.key(0), _model_cfg(tie_embeddings=False)))
  assert views == {"embed": "", "lm_head": "", "final_norm": "",
                   "blocks": {"attn_norm": "", "mlp_norm": "", "wqkv": "lisoo", "wo": "liio",
                              "w13": "liso", "w2": "lio"}}
  mla = muon.matrix_views(model.init_params(
      jax.random.key(0), _model_cfg(attention="mla", kv_lora_rank=16, rope_head_dim=8)))
  assert {k for k, v in mla["blocks"].items() if v} == {"wq", "wdkv", "wukv", "wo", "w13", "w2"}
  assert mla["blocks"]["kv_norm"] == "" and mla["embed"] == ""
  # A weight the table does not know: a 3-D stack is L x fan_in x fan_out; anything else is AdamW.
  other = {"blocks": {"w_new": np.zeros((2, 3, 4)), "w_odd": np.zeros((2, 3, 4, 5)),
                      "q_norm": np.zeros((2, 3, 4))}, "w_top": np.zeros((2, 3, 4))}
  assert muon.matrix_views(other) == {"blocks": {"w_new": "lio", "w_odd": "", "q_norm": ""},
                                      "w_top": ""}


def test_matrix_views_cut_the_fused_weights_into_the_documented_matrices():
  L, D, H, K, F = 2, 6, 2, 3, 5
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  wqkv, wo, w13, w2 = normal(L, D, 3, H, K), normal(L, H, K, D), normal(L, D, 2, F), normal(L, F, D)
  cases = [(wqkv, "lisoo", [wqkv[l, :, s].reshape(D, H * K) for l in range(L) for s in range(3)]),
           (wo, "liio", [wo[l].reshape(H * K, D) for l in range(L)]),
           (w13, "liso", [w13[l, :, s] for l in range(L) for s in range(2)]),
           (w2, "lio", [w2[l] for l in range(L)])]
  for x, roles, want in cases:
    got = muon.to_matrices(jnp.asarray(x), roles)
    np.testing.assert_array_equal(np.asarray(got), np.stack(want))
    np.testing.assert_array_equal(np.asarray(muon.from_matrices(got, roles, x.shape)), x)


# ----------------------------------------------------------------------------- one step


def np_reference_steps(params, grads_list, lr, mu, nesterov, wd, b1=0.9, b2=0.95, eps=1e-8):
  """Muon (Moonshot's update scale 0.2 sqrt(max(fan_in, fan_out))) on each per-layer matrix, cut
  out by explicit slicing; AdamW on embed (decayed) and the norm gains (not decayed)."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  L, D, _, H, K = p["wqkv"].shape
  buf = {k: np.zeros_like(p[k]) for k in ("wqkv", "wo", "w13", "w2")}
  m = {k: np.zeros_like(p[k]) for k in ("embed", "attn_norm", "final_norm")}
  v = {k: np.zeros_like(p[k]) for k in m}
  for t, grads in enumerate(grads_list, start=1):
    g = {k: np.array(x, np.float64) for k, x in grads.items()}
    for k in buf:
      buf[k] = mu * buf[k] + g[k]
    u = {k: g[k] + mu * buf[k] if nesterov else buf[k] for k in buf}
    new = {k: p[k].copy() for k in p}

    def muon_step(w, gm):
      scale = 0.2 * np.sqrt(max(w.shape))
      return w - lr * (scale * np_newton_schulz(gm) + wd * w)
    for l in range(L):
      for s in range(3):
        w = p["wqkv"][l, :, s].reshape(D, H * K)
        new["wqkv"][l, :, s] = muon_step(w, u["wqkv"][l, :, s].reshape(D, H * K)).reshape(D, H, K)
      wo = muon_step(p["wo"][l].reshape(H * K, D), u["wo"][l].reshape(H * K, D))
      new["wo"][l] = wo.reshape(H, K, D)
      for s in range(2):
        new["w13"][l, :, s] = muon_step(p["w13"][l, :, s], u["w13"][l, :, s])
      new["w2"][l] = muon_step(p["w2"][l], u["w2"][l])
    for k in m:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      new[k] = p[k] - lr * (step + (wd * p[k] if k == "embed" else 0.0))
    p = new
  return p


def _flat(tree):
  return {"embed": tree["embed"], "final_norm": tree["final_norm"], **tree["blocks"]}


@pytest.mark.parametrize("nesterov,grad_scale", [(True, None), (False, None), (True, 0.5)])
def test_three_steps_match_the_numpy_reference(nesterov, grad_scale):
  """Three steps of update_and_norm against the float64 transcription: the params, the AdamW count,
  the clipping factor applied to every gradient (grad_scale), and the new params' global norm."""
  L, D, H, K, F, V = 2, 8, 2, 4, 12, 11
  rng = np.random.default_rng(1)
  shapes = {"embed": (V, D), "final_norm": (D,), "attn_norm": (L, D), "wqkv": (L, D, 3, H, K),
            "wo": (L, H, K, D), "w13": (L, D, 2, F), "w2": (L, F, D)}
  nest = lambda f: {"embed": f("embed"), "final_norm": f("final_norm"),
                    "blocks": {k: f(k) for k in ("attn_norm", "wqkv", "wo", "w13", "w2")}}
  params = nest(lambda k: jnp.asarray(rng.normal(size=shapes[k]), jnp.float32))
  grads = [nest(lambda k: jnp.asarray(rng.normal(size=shapes[k]), jnp.float32)) for _ in range(3)]
  kw = dict(lr=0.02, mu=0.9, nesterov=nesterov, wd=0.1)
  step = jax.jit(lambda g, s, p: muon.update_and_norm(
      g, s, p, kw["lr"], momentum=kw["mu"], nesterov=nesterov, weight_decay=kw["wd"],
      grad_scale=grad_scale))
  ours, state = params, muon.init(params)
  for g in grads:
    ours, state, norm = step(g, state, ours)
  s = 1.0 if grad_scale is None else grad_scale
  want = np_reference_steps(_flat(params), [{k: s * np.asarray(v, np.float64) for k, v in _flat(g).items()}
                                            for g in grads], **kw)
  got = _flat(ours)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], atol=2e-5, rtol=0, err_msg=k)
  assert int(state["adamw"]["count"]) == 3
  want_norm = np.sqrt(sum(np.sum(np.square(v)) for v in want.values()))
  np.testing.assert_allclose(float(norm), want_norm, rtol=1e-5)


def test_update_rms_matches_adamws_so_the_lr_carries_over():
  """Moonshot's scale: an update of RMS ~0.2 per unit lr on every matrix shape, as AdamW's."""
  rng = np.random.default_rng(2)
  for shape in [(1, 64, 256), (1, 256, 64), (1, 128, 128)]:
    params = {"blocks": {"w2": jnp.zeros(shape, jnp.float32)}}
    grads = {"blocks": {"w2": jnp.asarray(rng.normal(size=shape), jnp.float32)}}
    new, _ = muon.update(grads, muon.init(params), params, 1.0, weight_decay=0.0)
    rms = float(jnp.sqrt(jnp.mean(new["blocks"]["w2"] ** 2)))
    assert 0.2 * 0.7 < rms < 0.2 * 1.2, (shape, rms)


# ----------------------------------------------------------------------------- in train.py


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return _write_tokens(str(tmp_path_factory.mktemp("tokens")))


@pytest.fixture(scope="module")
def muon_run(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("muon"))
  return workdir, train.train(_config(data_dir, optimizer="muon"), workdir)


def _state(workdir, step):
  """The whole saved train state (params, Muon momentum, AdamW moments, step, data key)."""
  # pylint: disable=protected-access  (load_checkpoint returns the params only)
  mgr = train._manager(workdir)
  _, meta = train._restore(mgr, step, None)
  config = ml_collections.ConfigDict(meta["config"])
  shapes = jax.eval_shape(lambda: train._init_state(config, jax.random.key(0)))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state, _ = train._restore(mgr, step, train._abstract(shapes, sharding))
  mgr.close()
  return jax.tree.map(np.asarray, state)


@pytest.mark.slow
def test_train_with_muon_learns(muon_run):
  workdir, summary = muon_run
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 21))
  assert np.mean([losses[s] for s in range(16, 21)]) < losses[1] - 1.5
  assert summary["final_val_loss"] < np.log(64) - 1.0
  state = _state(workdir, 20)
  assert set(state["opt"]) == {"momentum", "adamw"}
  assert set(state["opt"]["momentum"]["blocks"]) == {"wqkv", "wo", "w13", "w2"}
  assert np.abs(state["opt"]["momentum"]["blocks"]["wqkv"]).max() > 0


@pytest.mark.slow
def test_muon_resume_gives_the_same_state_as_an_uninterrupted_run(muon_run, data_dir, tmp_path):
  workdir, _ = muon_run
  shutil.copytree(os.path.join(workdir, "checkpoints", "10"), tmp_path / "checkpoints" / "10")
  summary = train.train(_config(data_dir, optimizer="muon"), str(tmp_path))  # runs 11..20
  assert summary["steps"] == 20
  ref, got = _losses(workdir), _losses(str(tmp_path))
  assert sorted(got) == list(range(11, 21))
  np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-6)
  a, b = _state(str(tmp_path), 20), _state(workdir, 20)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resuming_with_the_other_optimizer_names_the_fix(muon_run, data_dir, tmp_path):
  workdir, _ = muon_run
  shutil.copytree(os.path.join(workdir, "checkpoints", "10"), tmp_path / "checkpoints" / "10")
  with pytest.raises(UserError, match=r"optimizer='muon'.*--config.train.optimizer=muon.*new --workdir"):
    train.train(_config(data_dir, optimizer="adamw"), str(tmp_path))


def test_unknown_optimizer_is_a_user_error_naming_the_choices(data_dir, tmp_path):
  with pytest.raises(UserError, match=r"optimizer='sgd' is unknown.*optimizer=adamw.*optimizer=muon"):
    train.train(_config(data_dir, optimizer="sgd"), str(tmp_path))
