"""AdamW, global-norm clipping and learning-rate schedules, by hand on pytrees (knows no model).

The update is the form optax.adamw computes (DESIGN.md), t counted from 1:
  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  m^ = m/(1-b1^t);  v^ = v/(1-b2^t)
  theta -= lr * (m^ / (sqrt(v^) + eps) + wd * theta)      (the wd term only where mask is True)
Everything is jittable; `lr` and `step` may be traced. The moments are fp32 (or bf16, init's
moment_dtype) whatever the grads' dtype; the update's arithmetic is fp32 either way.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from errors import UserError

SCHEDULES = ("cosine", "wsd", "constant")


# The moments' storage dtype (config.train.moment_dtype). 'bfloat16' halves their bytes (the update
# moves 20 bytes a parameter instead of 28); the update still runs in fp32 and rounds each moment
# once as it stores it. Round-to-nearest is safe only while each step's increment, (1 - b) of the
# moment, spans several of bf16's half-spacings (2^-9..2^-8 relative): MIN_BF16_STEP bounds 1 - b1
# and 1 - b2 from below (b2 = 0.999 would leave v frozen wherever g^2 is near it).
MOMENT_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MIN_BF16_STEP = 2.0 ** -6


def init(params, moment_dtype="float32"):
  """Optimizer state {"count": int32 scalar, "mu": zeros like params, "nu": zeros like params}, the
  moments in moment_dtype (MOMENT_DTYPES); update() keeps whatever dtype the state has."""
  if moment_dtype not in MOMENT_DTYPES:
    raise UserError(f"moment_dtype {moment_dtype!r} is unknown; use one of {list(MOMENT_DTYPES)} "
                    "(--config.train.moment_dtype)")
  zeros = lambda p: jnp.zeros(jnp.shape(p), MOMENT_DTYPES[moment_dtype])
  return {"count": jnp.zeros((), jnp.int32),
          "mu": jax.tree.map(zeros, params),
          "nu": jax.tree.map(zeros, params)}


BACKENDS = ("xla", "triton")
TRITON_BLOCK = 4096       # elements per program of the Triton update (16 per thread at 8 warps)
TRITON_MIN_SIZE = 1 << 16  # smaller leaves (norm gains) stay in XLA: a launch each is not worth it


def update(grads, state, params, lr, *, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=None, grad_scale=None,
           backend="xla"):
  """One AdamW step -> (new params, new state). mask: pytree of bools like params, decay where True.

  grad_scale (a traced scalar, e.g. clip_scale's) multiplies the gradients first, each product
  rounded to its gradient's dtype: the values of clip_by_global_norm's output, without its pass over
  the gradients. backend='triton' runs each large leaf's update as one Triton kernel (GPU only;
  adamw_kernel_triton.py), in place when the state is donated; the values are the same up to the
  kernel's fp32 rounding.
  """
  return update_and_norm(grads, state, params, lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask,
                         grad_scale=grad_scale, backend=backend)[:2]


def update_and_norm(grads, state, params, lr, *, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=None,
                    grad_scale=None, backend="xla"):
  """update(), and the global norm of the new params (for a finiteness check), which the Triton
  kernel sums as it writes them: (new params, new state, norm)."""
  if backend not in BACKENDS:
    raise UserError(f"adamw backend {backend!r} is unknown; use one of {list(BACKENDS)} (--config.train.adamw_backend)")
  count = state["count"] + 1
  t = count.astype(jnp.float32)
  bc1 = 1.0 - jnp.asarray(b1, jnp.float32) ** t
  bc2 = 1.0 - jnp.asarray(b2, jnp.float32) ** t
  if mask is None:
    mask = jax.tree.map(lambda _: True, params)
  scale = jnp.ones((), jnp.float32) if grad_scale is None else jnp.asarray(grad_scale, jnp.float32)
  hyp = jnp.stack([jnp.asarray(lr, jnp.float32), scale, bc1, bc2])

  def leaf(p, g, m, v, decay):
    """(new p, new m, new v, sum of the new p's squares) for one leaf."""
    static = isinstance(decay, (bool, np.bool_))   # decay_mask's Python bools: decided at trace time
    if backend == "triton" and static and p.size >= TRITON_MIN_SIZE:
      return _leaf_triton(p, g, m, v, hyp, weight_decay if decay else 0.0, b1, b2, eps)
    if grad_scale is not None:
      g = _scaled(g, scale)
    g = g.astype(jnp.float32)
    m_dtype, v_dtype = m.dtype, v.dtype
    m = (1 - b1) * g + b1 * m.astype(jnp.float32)
    v = (1 - b2) * (g * g) + b2 * v.astype(jnp.float32)
    u = (m / bc1) / (jnp.sqrt(v / bc2) + eps)
    if static:
      if decay:
        u = u + weight_decay * p.astype(jnp.float32)
    else:  # an array mask (e.g. one that went through a checkpoint)
      u = u + jnp.where(decay, weight_decay, 0.0) * p.astype(jnp.float32)
    p = (p.astype(jnp.float32) - lr * u).astype(p.dtype)
    return p, m.astype(m_dtype), v.astype(v_dtype), jnp.sum(jnp.square(p.astype(jnp.float32)))

  treedef = jax.tree.structure(params)
  out = [leaf(*a) for a in zip(*(treedef.flatten_up_to(x) for x in (params, grads, state["mu"], state["nu"], mask)))]
  new_params, mu, nu = (treedef.unflatten([o[i] for o in out]) for i in range(3))
  return new_params, {"count": count, "mu": mu, "nu": nu}, jnp.sqrt(sum(o[3] for o in out))


def _leaf_triton(p, g, m, v, hyp, wd, b1, b2, eps):
  """update_and_norm's leaf() in one Triton kernel (adamw_kernel_triton.py)."""
  import errors  # pylint: disable=import-outside-toplevel
  jt, kern = errors.triton_kernels("adamw_kernel_triton", "adamw_backend", section="train")
  n = p.size
  programs = -(-n // TRITON_BLOCK)
  flat = lambda x: jax.ShapeDtypeStruct((n,), x.dtype)
  p_new, m_new, v_new, sq = jt.triton_call(
      p.reshape(n), g.reshape(n), m.reshape(n), v.reshape(n), hyp, kernel=kern.adamw_kernel,
      out_shape=(flat(p), flat(m), flat(v), jax.ShapeDtypeStruct((programs,), jnp.float32)),
      grid=(programs,), num_warps=8, num_stages=1, input_output_aliases={0: 0, 2: 1, 3: 2},
      N=n, B1=float(b1), B2=float(b2), EPS=float(eps), WD=float(wd), BLOCK=TRITON_BLOCK)
  return p_new.reshape(p.shape), m_new.reshape(p.shape), v_new.reshape(p.shape), jnp.sum(sq)


def global_norm(tree):
  """l2 norm of all leaves together, in fp32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(grads, max_norm):
  """Scales grads by max_norm/(norm+1e-6) when their global norm exceeds max_norm -> (grads, norm).

  The returned norm is the one before clipping (what is worth logging). max_norm None: no clipping.
  """
  norm = global_norm(grads)
  if max_norm is None:
    return grads, norm
  return scale_grads(grads, clip_scale(norm, max_norm)), norm


def clip_scale(norm, max_norm):
  """The factor clip_by_global_norm multiplies the gradients by: max_norm/(norm+1e-6) above max_norm, else 1."""
  return jnp.where(norm > max_norm, max_norm / (norm + 1e-6), 1.0)


def scale_grads(grads, scale):
  """Every gradient times scale, rounded back to its dtype (what clipping does to them)."""
  return jax.tree.map(lambda g: _scaled(g, scale), grads)


def _scaled(g, scale):
  return (g * scale).astype(g.dtype)


def decay_mask(params):
  """True where weight decay applies: matrices and the embedding; False for norm gains and vectors.

  Layers are stacked on a leading axis, so a stacked norm gain (L x D) is 2-D too: any leaf whose
  path has a key containing "norm" counts as a gain (model.py names them *_norm).
  """
  def decays(path, p):
    is_norm = any("norm" in str(getattr(k, "key", getattr(k, "name", ""))) for k in path)
    return bool(jnp.ndim(p) >= 2 and not is_norm)
  return jax.tree_util.tree_map_with_path(decays, params)


def _check_schedule(schedule, warmup_steps, total_steps, decay_frac):
  if schedule not in SCHEDULES:
    raise UserError(f"lr schedule {schedule!r} is unknown; use one of {list(SCHEDULES)} "
                    "(--config.train.schedule)")
  numbers = all(isinstance(x, (int, float)) for x in (warmup_steps, total_steps))
  if numbers and schedule == "cosine" and total_steps <= warmup_steps:
    raise UserError(f"cosine schedule needs total steps ({total_steps}) > warmup_steps ({warmup_steps}); "
                    "lower train.warmup_steps or raise train.steps")
  if schedule == "wsd" and isinstance(decay_frac, (int, float)) and not 0 < decay_frac <= 1:
    raise UserError(f"wsd decay_frac={decay_frac} must be in (0, 1]; e.g. 0.2 decays over the last 20%")


def lr_at(step, *, lr, warmup_steps, total_steps, min_lr, schedule="cosine", decay_frac=0.2):
  """Learning rate at `step` (int, may be traced).

  Warmup: lr * step / warmup_steps for step < warmup_steps (so step 0 gives 0). Then:
  'cosine': min_lr + (lr - min_lr) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2,
            min_lr after total_steps;
  'wsd': lr until total*(1 - decay_frac), then linear to min_lr at total_steps, min_lr after;
  'constant': lr.
  """
  _check_schedule(schedule, warmup_steps, total_steps, decay_frac)
  t = jnp.asarray(step, jnp.float32)
  warm = jnp.asarray(warmup_steps, jnp.float32)
  total = jnp.asarray(total_steps, jnp.float32)
  warmup_lr = lr * t / jnp.maximum(warm, 1.0)
  if schedule == "cosine":
    frac = jnp.clip((t - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
    after = min_lr + 0.5 * (lr - min_lr) * (1.0 + jnp.cos(math.pi * frac))
  elif schedule == "wsd":
    decay_steps = decay_frac * total
    frac = jnp.clip((t - (total - decay_steps)) / decay_steps, 0.0, 1.0)
    after = lr + (min_lr - lr) * frac
  else:
    after = jnp.asarray(lr, jnp.float32) + 0.0 * t
  return jnp.where(t < warm, warmup_lr, after)
