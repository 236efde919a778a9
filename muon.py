"""Muon for the hidden weight matrices, AdamW (adamw.py) for everything else; by hand on pytrees.

Muon (Keller Jordan 2024, "Muon: an optimizer for hidden layers"; Moonshot AI 2025, "Muon is
scalable for LLM training") on one weight matrix W (fan_in x fan_out) with gradient G:
  M = mu M + G                             (momentum buffer, fp32)
  U = G + mu M   (nesterov)   or   U = M   (plain)
  O = NS5(U)                               (~ P Q^T, where U = P S Q^T is U's SVD)
  W -= lr * (0.2 * sqrt(max(fan_in, fan_out)) * O + wd * W)
(Jordan's later EMA form, M = lerp(M, G, 1-mu), U = lerp(G, M, mu), is this U times (1-mu): the same
O, since NS5 first divides by the Frobenius norm.)
The 0.2 * sqrt(max(...)) factor is Moonshot's: an orthogonal m x n matrix has RMS 1/sqrt(max(m, n)),
so the scaled update has RMS ~0.2, the RMS AdamW's updates typically have. The same lr, schedule and
decoupled weight decay therefore carry over from AdamW (config.train.lr); `lr_scale` multiplies
Muon's lr if a run wants it different. (Keller's own scale, sqrt(max(1, fan_out/fan_in)) with lr
~0.02, needs a separate lr.)

NS5 is the quintic Newton-Schulz iteration X <- a X + (b A + c A^2) X with A = X X^T,
(a, b, c) = (3.4445, -4.7750, 2.0315), 5 steps, started from U / ||U||_F (so every singular value
is <= 1). It maps each singular value s (of the normalised U) to p(s), p(s) in [0.68, 1.21] for
s >= 1.5e-3 (tests/test_muon.py): not exactly P Q^T, on purpose (Jordan's coefficients trade exact
convergence for a steep slope at 0, so small singular values grow fast). It runs on the
smaller Gram side: an m x n matrix with m > n is transposed first, so A is min(m, n) square.

Which leaves are Muon matrices (`matrix_views`): model.py stacks per-layer weights on a leading L
axis and keeps fused axes, so a leaf maps to a batch of 2-D matrices by a role string, one letter
per axis: 'l' layer and 's' split (batch axes: each index is its own matrix), 'i' fan-in, 'o'
fan-out. VIEWS names the model's weights; fused q/k/v and gate/up are split into separate
matrices ('s'), since they are different linear maps: orthogonalising the concatenation would tie
the update of W_q to the spectrum of W_v's gradient (modded-nanogpt likewise keeps its QKV weight
as a 3 x d x d stack under a batched Newton-Schulz). Any other 3-D leaf under "blocks" whose name
has no "norm" is read as L x fan_in x fan_out. Everything else, the embedding, the LM head, norm
gains, vectors, uses AdamW: Muon is for hidden matrices (Jordan 2024).

Params must be nested dicts (DESIGN.md's layout). Everything is jittable; `lr` may be traced.
"""
import itertools
import math

import jax
import jax.numpy as jnp

import adamw

NS_COEFFS = (3.4445, -4.7750, 2.0315)
VIEWS = {  # leaf name under "blocks" -> role of each axis (model.py's shapes in the comments)
    "wqkv": "lisoo",  # L x D x 3 x H x K: q, k, v each D x HK
    "wo": "liio",     # L x H x K x D: HK x D
    "w13": "liso",    # L x D x 2 x F: gate, up each D x F
    "w2": "lio",      # L x F x D
    "wq": "lioo",     # MLA: L x D x H x (K+R)
    "wdkv": "lio",    # MLA: L x D x (C+R)
    "wukv": "lisoo",  # MLA: L x C x 2 x H x K: k, v each C x HK
}


def _view(path, p):
  names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
  if len(names) < 2 or names[0] != "blocks" or any("norm" in n for n in names):
    return ""
  roles = VIEWS.get(names[-1], "lio" if jnp.ndim(p) == 3 else "")
  return roles if len(roles) == jnp.ndim(p) else ""


def matrix_views(params):
  """A pytree like params of role strings: e.g. 'lisoo' for a Muon matrix stack, '' for AdamW."""
  return jax.tree_util.tree_map_with_path(_view, params)


def _perm(roles):
  """Axis order that puts batch axes ('l', 's') first, then fan-in, then fan-out."""
  return [a for group in ("ls", "i", "o") for a, r in enumerate(roles) if r in group]


def to_matrices(x, roles):
  """The leaf as N x fan_in x fan_out: N = product of the batch axes."""
  shape = jnp.shape(x)
  fan_in = math.prod(shape[a] for a, r in enumerate(roles) if r == "i")
  fan_out = math.prod(shape[a] for a, r in enumerate(roles) if r == "o")
  return jnp.transpose(x, _perm(roles)).reshape(-1, fan_in, fan_out)


def from_matrices(x_NIO, roles, shape):
  """Inverse of to_matrices: back to the leaf's own shape."""
  perm = _perm(roles)
  x = x_NIO.reshape([shape[a] for a in perm])
  inverse = sorted(range(len(perm)), key=perm.__getitem__)
  return jnp.transpose(x, inverse)


def newton_schulz(g_NIO, steps=5, eps=1e-7, dtype=jnp.float32):
  """NS5 of each matrix of the batch: ~U V^T of its SVD (singular values ~[0.7, 1.2]), as fp32.

  dtype is the iteration's: bfloat16 runs its matmuls at the bf16 rate (Jordan's Muon does); the
  normalisation is fp32 either way, and the result is rounded to bf16 after each of the 5 steps.
  """
  a, b, c = NS_COEFFS
  x = g_NIO.astype(jnp.float32)
  tall = x.shape[-2] > x.shape[-1]
  if tall:  # iterate on the smaller Gram matrix
    x = jnp.swapaxes(x, -1, -2)
  x = (x / (jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True)) + eps)).astype(dtype)
  for _ in range(steps):
    a_NMM = x @ jnp.swapaxes(x, -1, -2)
    x = a * x + (b * a_NMM + c * a_NMM @ a_NMM) @ x
  x = x.astype(jnp.float32)
  return jnp.swapaxes(x, -1, -2) if tall else x


def _split(tree, views, muon):
  """The sub-dict of tree's Muon leaves (muon=True) or AdamW leaves (False); empty dicts dropped."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      sub = _split(v, views[k], muon)
      if sub:
        out[k] = sub
    elif bool(views[k]) == muon:
      out[k] = v
  return out


def _merge(a, b):
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if k in out else v
  return out


def init(params, moment_dtype="float32"):
  """{"momentum": fp32 zeros for the Muon leaves, "adamw": adamw.init of the other leaves (its
  moments in moment_dtype)}."""
  views = matrix_views(params)
  zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)
  return {"momentum": jax.tree.map(zeros, _split(params, views, True)),
          "adamw": adamw.init(_split(params, views, False), moment_dtype)}


def newton_schulz_many(mats, steps=5, dtype=jnp.float32):
  """newton_schulz of several N x I x O batches, run as one batch per matrix shape.

  The tall ones are transposed wide first (newton_schulz would do it anyway), so q, k, v and wo
  (all D x D) share one batch and W1, W3 and W2^T (D x F) another: the iteration's 15 matmuls
  launch once per shape instead of once per leaf. Each matrix is still normalised on its own.
  """
  wide = [m if m.shape[-2] <= m.shape[-1] else jnp.swapaxes(m, -1, -2) for m in mats]
  groups = {}
  for i, w in enumerate(wide):
    groups.setdefault(w.shape[1:], []).append(i)
  out = [None] * len(mats)
  for idx in groups.values():
    o = newton_schulz(jnp.concatenate([wide[i] for i in idx]), steps, dtype=dtype)
    ends = list(itertools.accumulate(wide[i].shape[0] for i in idx))
    for i, start, end in zip(idx, [0] + ends, ends):
      out[i] = o[start:end] if wide[i] is mats[i] else jnp.swapaxes(o[start:end], -1, -2)
  return out


def update(grads, state, params, lr, **kw):
  """One step -> (new params, new state): update_and_norm without the norm."""
  return update_and_norm(grads, state, params, lr, **kw)[:2]


def update_and_norm(grads, state, params, lr, *, momentum=0.95, nesterov=True, ns_steps=5,
                    lr_scale=1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, ns_dtype=jnp.float32,
                    grad_scale=None, backend="xla"):
  """One step -> (new params, new state, global norm of the new params): Muon on the matrix
  leaves, AdamW (b1, b2, eps, with adamw.decay_mask; its `backend`) on the others; weight_decay is
  decoupled in both. ns_dtype: newton_schulz's. grad_scale (e.g. the clipping factor) multiplies
  every gradient as it is read, as in adamw.update_and_norm."""
  views = matrix_views(params)
  m_views = _split(views, views, True)
  scaled = (lambda x: x) if grad_scale is None else (lambda x: adamw.scale_grads(x, grad_scale))
  g = jax.tree.map(lambda x: x.astype(jnp.float32), scaled(_split(grads, views, True)))
  buf = jax.tree.map(lambda m, x: momentum * m + x, state["momentum"], g)
  u = jax.tree.map(lambda m, x: x + momentum * m, buf, g) if nesterov else buf

  u_leaves, treedef = jax.tree.flatten(u)
  roles = treedef.flatten_up_to(m_views)
  p_leaves = treedef.flatten_up_to(_split(params, views, True))
  orth = newton_schulz_many([to_matrices(x, r) for x, r in zip(u_leaves, roles)], ns_steps, ns_dtype)
  new_leaves, sq = [], 0.0
  for p, o_NIO, r in zip(p_leaves, orth, roles):
    o = from_matrices(o_NIO, r, jnp.shape(p))
    p32 = p.astype(jnp.float32)
    p32 = p32 - lr * lr_scale * (0.2 * math.sqrt(max(o_NIO.shape[1:])) * o + weight_decay * p32)
    new_leaves.append(p32.astype(p.dtype))
    sq = sq + jnp.sum(jnp.square(p32))
  muon_params = treedef.unflatten(new_leaves)

  a_params = _split(params, views, False)
  a_params, a_state, a_norm = adamw.update_and_norm(
      _split(grads, views, False), state["adamw"], a_params, lr, b1=b1, b2=b2, eps=eps,
      weight_decay=weight_decay, mask=adamw.decay_mask(a_params), grad_scale=grad_scale,
      backend=backend)
  norm = jnp.sqrt(sq + jnp.square(a_norm))
  return _merge(muon_params, a_params), {"momentum": buf, "adamw": a_state}, norm
