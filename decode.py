"""Inference path of model.py: KV-cache prefill/decode, MLA latent caches, DSA top-k sparse attention.

A sibling of model.py rather than part of it (docs/generation.md): training never imports it, and
model.py stays the one short file that defines the training math. Every function here reuses
model.py's layers (rms_norm, swiglu, the head) so the two paths cannot drift apart.

One function, `extend`, runs T new tokens through the model against a preallocated cache of S
slots: prefill is `extend` on the (left-padded) prompt, decoding is `extend` on one token. The
cache layout depends on the inference kind (`prepare`):
  'mha'      cache k, v: L x B x S x H x K each (full keys and values);
  'mla'      native MLA: cache the normed latent c (L x B x S x C) and the shared RoPE key
             (L x B x S x R); the K up-projection is absorbed into the query and the V
             up-projection applied after the attention-weighted sum of latents, so per-head K and
             V are never materialised;
  'mla_svd'  an MHA checkpoint converted by a truncated SVD of [W_k | W_v] (rank r): cache the
             latent c = h W_down (L x B x S x r); values absorbed as in 'mla'; keys reconstructed
             from the cached latents and rotated at their positions every step (RoPE sits between
             W_k and the score, so W_k cannot be absorbed: the cost of converting).
DSA (`sparse_top_k`) keeps, for each query, only its top-k keys: by the exact attention scores of
each head, or, when an indexer is given, by the lightning indexer's score shared by all heads.
Sequences in a batch are left-padded: slot t of sequence b holds position t - pad_B[b], and slots
before pad_B[b] are never attended to.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

import adamw
import model
from errors import UserError

KINDS = ("mha", "mla", "mla_svd")


# ----------------------------------------------------------------------------- preparation


def svd_to_mla(params, cfg, rank):
  """MHA params -> params with blocks['wdown'] (L x D x r) and blocks['wup'] (L x r x 2 x H x K).

  [W_k | W_v] (D x 2HK) = U S V^T; W_down = U_r S_r, W_up = V_r^T: the best rank-r approximation
  (Eckart-Young), exact when r >= rank(W) (at most min(D, 2HK) = D).
  """
  L, D, _, H, K = params["blocks"]["wqkv"].shape
  if not 1 <= rank <= D:
    raise UserError(f"--mla_rank={rank} is out of range; choose 1 <= mla_rank <= d_model={D} "
                    f"(d_model is already exact)")
  w_LDE = np.asarray(params["blocks"]["wqkv"][:, :, 1:], np.float64).reshape(L, D, 2 * H * K)
  u, s, vt = np.linalg.svd(w_LDE, full_matrices=False)
  blocks = dict(params["blocks"])
  blocks["wdown"] = jnp.asarray((u[:, :, :rank] * s[:, None, :rank]).astype(np.float32))
  blocks["wup"] = jnp.asarray(vt[:, :rank].reshape(L, rank, 2, H, K).astype(np.float32))
  return {**params, "blocks": blocks}


def prepare(params, cfg, use_mla=False, mla_rank=0):
  """(params, kind) for inference: native MLA stays 'mla'; MHA becomes 'mla_svd' when use_mla."""
  if cfg.attention == "mla":
    return params, "mla"
  if use_mla:
    return svd_to_mla(params, cfg, mla_rank or cfg.d_model), "mla_svd"
  return params, "mha"


def cache_shapes(cfg, kind, B, S, rank=0, indexer=None):
  """{name: shape} of the cache (all L-stacked); rank is the 'mla_svd' latent width."""
  L, H, K = cfg.n_layers, cfg.n_heads, cfg.d_model // cfg.n_heads
  if kind == "mha":
    shapes = {"k": (L, B, S, H, K), "v": (L, B, S, H, K)}
  elif kind == "mla":
    shapes = {"c": (L, B, S, cfg.kv_lora_rank), "kr": (L, B, S, cfg.rope_head_dim)}
  else:
    shapes = {"c": (L, B, S, rank)}
  if indexer is not None:
    shapes["ki"] = (L, B, S, indexer["wk"].shape[-1])
  return shapes


def cache_bytes_per_token_layer(cfg, kind, rank=0, dtype_bytes=2, indexer_dim=0):
  """Bytes one token adds to one layer's cache: MHA 2HK, MLA C+R, converted MLA r (+ indexer I)."""
  H, K = cfg.n_heads, cfg.d_model // cfg.n_heads
  n = {"mha": 2 * H * K, "mla": cfg.kv_lora_rank + cfg.rope_head_dim, "mla_svd": rank}[kind]
  return (n + indexer_dim) * dtype_bytes


def init_cache(params, cfg, kind, B, S, indexer=None):
  dtype = model.DTYPES[cfg.compute_dtype]
  rank = params["blocks"]["wdown"].shape[-1] if kind == "mla_svd" else 0
  return {n: jnp.zeros(s, dtype) for n, s in cache_shapes(cfg, kind, B, S, rank, indexer).items()}


# ----------------------------------------------------------------------------- RoPE at positions


def rope_at(x_BTHK, pos_BT, theta):
  """model.apply_rope with a position per (batch, time) instead of 0..T-1 (same pairs, same math)."""
  dim = x_BTHK.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angle_BTK = pos_BT.astype(jnp.float32)[..., None] * inv_freq
  cos, sin = jnp.cos(angle_BTK)[:, :, None], jnp.sin(angle_BTK)[:, :, None]
  x = x_BTHK.astype(jnp.float32).reshape(*x_BTHK.shape[:-1], -1, 2)
  x0, x1 = x[..., 0], x[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x_BTHK.shape).astype(x_BTHK.dtype)


# ----------------------------------------------------------------------------- attention


def probs(s_BHTS, keep_BTS, sel_BGTS, top_k):
  """Softmax over the kept keys; with top_k, only each query's top_k keys by sel (G = H or 1).

  sel None means the exact scores s themselves. Keys tied with the k-th score are all kept.
  """
  s_BHTS = jnp.where(keep_BTS[:, None], s_BHTS, -jnp.inf)
  if top_k and top_k < s_BHTS.shape[-1]:
    sel = s_BHTS if sel_BGTS is None else jnp.where(keep_BTS[:, None], sel_BGTS, -jnp.inf)
    kth = jax.lax.top_k(sel, top_k)[0][..., -1:]
    s_BHTS = jnp.where(sel >= kth, s_BHTS, -jnp.inf)
  return jax.nn.softmax(s_BHTS, axis=-1)


def _writer(cache, l, start):
  """put(name, new_BT_) writes layer l's new entries at slots start.. of the L-stacked cache in place
  (one dynamic-update-slice, no copy of the other layers) and returns that layer's B x S view."""
  def put(name, new_BT_):
    full = cache[name]
    idx = (l, 0, start) + (0,) * (full.ndim - 3)
    cache[name] = jax.lax.dynamic_update_slice(full, new_BT_[None].astype(full.dtype), idx)
    return cache[name][l]
  return put


def _mha(p, h_BTD, put, pos, keep_BTS, sel, cfg, top_k, dtype):
  K = cfg.d_model // cfg.n_heads
  qkv = jnp.einsum("btd,dshk->btshk", h_BTD, p["wqkv"].astype(dtype))
  q_BTHK, k_BTHK = model.qk_norm(p, qkv[:, :, 0], qkv[:, :, 1], cfg, dtype)
  q_BTHK = rope_at(q_BTHK, pos["q"], cfg.rope_theta)
  k_BSHK = put("k", rope_at(k_BTHK, pos["q"], cfg.rope_theta))
  v_BSHK = put("v", qkv[:, :, 2])
  s = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK, preferred_element_type=jnp.float32) / math.sqrt(K)
  p_BHTS = probs(s, keep_BTS, sel, top_k)
  o_BTHK = jnp.einsum("bhts,bshk->bthk", p_BHTS.astype(dtype), v_BSHK)
  return jnp.einsum("bthk,hkd->btd", o_BTHK, p["wo"].astype(dtype)), p_BHTS


def _mla(p, h_BTD, put, pos, keep_BTS, sel, cfg, top_k, dtype):
  """Absorbed MLA: scores are q_nope W_uk^T . c + q_rope . k_rope; output (sum p c) W_uv W_o."""
  C, K, R = cfg.kv_lora_rank, cfg.d_model // cfg.n_heads, cfg.rope_head_dim
  q_BTHE = jnp.einsum("btd,dhe->bthe", h_BTD, p["wq"].astype(dtype))
  q_rope_BTHR = rope_at(q_BTHE[..., K:], pos["q"], cfg.rope_theta)
  ckv_BTE = jnp.einsum("btd,de->bte", h_BTD, p["wdkv"].astype(dtype))
  c_BSC = put("c", model.rms_norm(ckv_BTE[..., :C], p["kv_norm"], dtype))
  kr_BSR = put("kr", rope_at(ckv_BTE[:, :, None, C:], pos["q"], cfg.rope_theta)[:, :, 0])
  wuk_CHK, wuv_CHK = p["wukv"][:, 0].astype(dtype), p["wukv"][:, 1].astype(dtype)
  q_lat_BTHC = jnp.einsum("bthk,chk->bthc", q_BTHE[..., :K], wuk_CHK)
  s = (jnp.einsum("bthc,bsc->bhts", q_lat_BTHC, c_BSC, preferred_element_type=jnp.float32)
       + jnp.einsum("bthr,bsr->bhts", q_rope_BTHR, kr_BSR, preferred_element_type=jnp.float32))
  p_BHTS = probs(s / math.sqrt(K + R), keep_BTS, sel, top_k)
  ctx_BTHC = jnp.einsum("bhts,bsc->bthc", p_BHTS.astype(dtype), c_BSC)
  o_BTHK = jnp.einsum("bthc,chk->bthk", ctx_BTHC, wuv_CHK)
  return jnp.einsum("bthk,hkd->btd", o_BTHK, p["wo"].astype(dtype)), p_BHTS


def _mla_svd(p, h_BTD, put, pos, keep_BTS, sel, cfg, top_k, dtype):
  """Converted MHA: keys rebuilt from all cached latents (RoPE'd at their positions), values absorbed."""
  K = cfg.d_model // cfg.n_heads
  q_BTHK = jnp.einsum("btd,dhk->bthk", h_BTD, p["wqkv"][:, 0].astype(dtype))
  c_BSR = put("c", jnp.einsum("btd,dr->btr", h_BTD, p["wdown"].astype(dtype)))
  k_BSHK = jnp.einsum("bsr,rhk->bshk", c_BSR, p["wup"][:, 0].astype(dtype))
  q_BTHK, k_BSHK = model.qk_norm(p, q_BTHK, k_BSHK, cfg, dtype)   # each rebuilt key, as model._mha does
  q_BTHK = rope_at(q_BTHK, pos["q"], cfg.rope_theta)
  k_BSHK = rope_at(k_BSHK, pos["k"], cfg.rope_theta)
  s = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK, preferred_element_type=jnp.float32) / math.sqrt(K)
  p_BHTS = probs(s, keep_BTS, sel, top_k)
  ctx_BTHR = jnp.einsum("bhts,bsr->bthr", p_BHTS.astype(dtype), c_BSR)
  o_BTHK = jnp.einsum("bthr,rhk->bthk", ctx_BTHR, p["wup"][:, 1].astype(dtype))
  return jnp.einsum("bthk,hkd->btd", o_BTHK, p["wo"].astype(dtype)), p_BHTS


_ATTEND = {"mha": _mha, "mla": _mla, "mla_svd": _mla_svd}


# ----------------------------------------------------------------------------- lightning indexer


def init_indexer(key, cfg, n_heads=4, dim=32):
  """DeepSeek-V3.2 lightning indexer per layer: G small query heads, one shared key, per-head weights."""
  L, D = cfg.n_layers, cfg.d_model
  kq, kk, kw = jax.random.split(key, 3)
  return {"wq": model._linear(kq, (L, D, n_heads, dim), D, n_heads * dim),
          "wk": model._linear(kk, (L, D, dim), D, dim),
          "ww": model._linear(kw, (L, D, n_heads), D, n_heads)}


def index_scores(ip, h_BTD, ki_BS1I, pos_BT, theta):
  """score(t, s) = sum_g w_g(t) ReLU(q_g(t) . k(s)); q, k RoPE'd so the score knows distance. B x T x S."""
  q_BTGI = rope_at(jnp.einsum("btd,dgi->btgi", h_BTD, ip["wq"]), pos_BT, theta)
  w_BTG = jnp.einsum("btd,dg->btg", h_BTD, ip["ww"]) / math.sqrt(ip["ww"].shape[-1])
  dots_BTGS = jnp.einsum("btgi,bsi->btgs", q_BTGI, ki_BS1I[:, :, 0]) / math.sqrt(q_BTGI.shape[-1])
  return jnp.einsum("btg,btgs->bts", w_BTG, jax.nn.relu(dots_BTGS))


# ----------------------------------------------------------------------------- the model on a cache


def extend(params, cfg, kind, cache, tokens_BT, start, pad_B, top_k=0, indexer=None, collect=False):
  """Runs tokens_BT (slots start..start+T-1) against the cache -> (fp32 logits B x T x V, cache).

  With collect, also returns per layer (attention input h_BTD, head-mean probabilities B x T x S):
  the targets for distilling the indexer.
  """
  dtype = model.DTYPES[cfg.compute_dtype]
  B, T = tokens_BT.shape
  S = next(iter(cache.values())).shape[2]
  slot_T = start + jnp.arange(T)
  slot_S = jnp.arange(S)
  pos = {"q": slot_T[None, :] - pad_B[:, None], "k": slot_S[None, :] - pad_B[:, None]}
  # Causal over slots, never a pad slot; a pad query sees itself so its row is finite (then unused).
  keep_BTS = (slot_S[None, None, :] <= slot_T[None, :, None]) & (
      (slot_S[None, None, :] >= pad_B[:, None, None]) | (slot_S[None, None, :] == slot_T[None, :, None]))
  x_BTD = params["embed"][tokens_BT]
  cache, aux = dict(cache), []
  for l in range(cfg.n_layers):
    p = jax.tree.map(lambda a, l=l: a[l], params["blocks"])
    put = _writer(cache, l, start)
    h_BTD = model.rms_norm(x_BTD, p["attn_norm"], dtype)
    sel = None
    if indexer is not None:
      ip = jax.tree.map(lambda a, l=l: a[l].astype(dtype), indexer)
      ki_BSI = put("ki", rope_at(jnp.einsum("btd,di->bti", h_BTD, ip["wk"])[:, :, None], pos["q"],
                                 cfg.rope_theta)[:, :, 0])
      sel = index_scores(ip, h_BTD, ki_BSI[:, :, None], pos["q"], cfg.rope_theta)[:, None].astype(jnp.float32)
    out_BTD, p_BHTS = _ATTEND[kind](p, h_BTD, put, pos, keep_BTS, sel, cfg, top_k, dtype)
    if collect:
      aux.append((h_BTD, p_BHTS.mean(axis=1)))
    if model._option(cfg, "parallel_block"):   # pylint: disable=protected-access
      x_BTD = x_BTD + out_BTD + model.swiglu(p, h_BTD, dtype)
      continue
    x_BTD = x_BTD + out_BTD
    x_BTD = x_BTD + model.swiglu(p, model.rms_norm(x_BTD, p["mlp_norm"], dtype), dtype)
  spec, w = model._head(params, cfg)
  h_BTD = model.rms_norm(x_BTD, params["final_norm"], dtype)
  logits_BTV = jnp.einsum(spec, h_BTD, w, preferred_element_type=jnp.float32)
  logits_BTV = model.softcap(logits_BTV, model._option(cfg, "logit_softcap"))
  return (logits_BTV, cache, aux) if collect else (logits_BTV, cache)


def full_logits(params, cfg, kind, tokens_BT, top_k=0, indexer=None):
  """Logits of whole sequences through the inference path (an empty cache of exactly T slots)."""
  B, T = tokens_BT.shape
  cache = init_cache(params, cfg, kind, B, T, indexer)
  return extend(params, cfg, kind, cache, tokens_BT, 0, jnp.zeros((B,), jnp.int32), top_k, indexer)[0]


def val_loss(params, cfg, kind, windows_NT1, batch_size=8, top_k=0, indexer=None):
  """Mean next-token cross-entropy over all windows (N x T+1) through the inference path."""
  fn = jax.jit(lambda w_BT1: _xent(full_logits(params, cfg, kind, w_BT1[:, :-1], top_k, indexer), w_BT1[:, 1:]))
  N = len(windows_NT1)
  padded = np.concatenate([windows_NT1, np.zeros((-N % batch_size, windows_NT1.shape[1]), windows_NT1.dtype)])
  per_window = np.concatenate([np.asarray(fn(jnp.asarray(padded[i:i + batch_size], jnp.int32)))
                               for i in range(0, len(padded), batch_size)])
  return float(per_window[:N].mean())


def _xent(logits_BTV, targets_BT):
  """Per-sequence mean cross-entropy, B."""
  lse = jax.nn.logsumexp(logits_BTV, axis=-1)
  return jnp.mean(lse - jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0], axis=-1)


# ----------------------------------------------------------------------------- indexer training


def indexer_kl(indexer, params, cfg, kind, tokens_BT):
  """KL(dense head-mean attention || softmax(indexer scores)), summed over layers, mean over queries."""
  B, T = tokens_BT.shape
  cache = init_cache(params, cfg, kind, B, T)
  _, _, aux = extend(params, cfg, kind, cache, tokens_BT, 0, jnp.zeros((B,), jnp.int32), collect=True)
  pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  causal_TS = jnp.tril(jnp.ones((T, T), bool))
  total = 0.0
  for l, (h_BTD, p_BTS) in enumerate(aux):
    ip = jax.tree.map(lambda a, l=l: a[l], indexer)
    h_BTD, p_BTS = jax.lax.stop_gradient((h_BTD.astype(jnp.float32), p_BTS))
    ki_BTI = rope_at(jnp.einsum("btd,di->bti", h_BTD, ip["wk"])[:, :, None], pos_BT, cfg.rope_theta)[:, :, 0]
    s_BTS = jnp.where(causal_TS, index_scores(ip, h_BTD, ki_BTI[:, :, None], pos_BT, cfg.rope_theta), -jnp.inf)
    logq_BTS = jax.nn.log_softmax(s_BTS, axis=-1)
    kl = jnp.where(causal_TS & (p_BTS > 0), p_BTS * (jnp.log(jnp.where(p_BTS > 0, p_BTS, 1.0)) - logq_BTS), 0.0)
    total = total + kl.sum(-1).mean()
  return total


def train_indexer(params, cfg, kind, train_N, steps, *, batch_size=8, lr=3e-3, seed=0, n_heads=4, dim=32,
                  log=print):
  """Distils a lightning indexer from the frozen model's dense attention (AdamW on the indexer only)."""
  T = cfg.context_length
  key_init, key_data = jax.random.split(jax.random.key(seed))
  indexer = init_indexer(key_init, cfg, n_heads, dim)
  state = adamw.init(indexer)

  @jax.jit
  def step(indexer, state, tokens_BT, lr_now):
    loss, g = jax.value_and_grad(indexer_kl)(indexer, params, cfg, kind, tokens_BT)
    indexer, state = adamw.update(g, state, indexer, lr_now, weight_decay=0.0)
    return indexer, state, loss

  rng = np.random.default_rng(seed)
  for i in range(steps):
    starts = rng.integers(0, len(train_N) - T, batch_size)
    batch = jnp.asarray(np.stack([train_N[s:s + T] for s in starts]).astype(np.int32))
    lr_now = adamw.lr_at(i, lr=lr, warmup_steps=max(1, steps // 10), total_steps=steps, min_lr=lr / 10)
    indexer, state, loss = step(indexer, state, batch, lr_now)
    if log and (i % max(1, steps // 10) == 0 or i == steps - 1):
      log(f"indexer step {i + 1}/{steps}: KL {float(loss):.4f}")
  return indexer
