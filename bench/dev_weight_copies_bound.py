"""Dev (GPU), a bound, not a training path: the B128 step with the weights' e4m3 copies made before it.

Each step opens with every weight's FP8 copies: per-layer amax reductions over the fp32 W13, W2 and
Wqkv stacks and the padded embedding, their e4m3 casts, XLA's transposes into the second layout,
and out_scale's column sums. In the forty-third session's H100 profile
(bench/results/h100_session43/step_profile_dqkv8.json) that work fills the step's first ~190 us
beside the embedding lookup and the first norm, and the first GEMM starts at 195 us. If AdamW's
kernel wrote those copies as it writes the new weights (scaled from the amax the step already
knows), the step would not make them at all. Before building that, this measures what it could
gain at most: `install()` replaces fp8_mlp.mlp_weights, qkv_weights and head_logits' weight cast
with constants of the same shapes, dtypes and magnitudes (made once from random weights of the
init's scale, then embedded in the compiled step), so the step runs everything else as it is.
The loss it trains is meaningless; only its time counts.

Measured in the forty-fifth session (H100, bench/results/h100_session45/): -0.141 ms alone against
the tree, as much as DH_SCALE='norm' (-0.139); on top of 'norm' only -0.025 ms (8.012 / 8.016 vs
8.018 / 8.060), so AdamW writing the copies was not built.

  VARIANTS="base wconst" OUT=dir bash bench/dev_step_variants.sh
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

import fp8_mlp

_CACHE = {}


def _stand_in(key, fn, *shapes_stds):
  """fn's outputs on random fp32 weights of the given (shape, std)s, made once, as constants."""
  if key not in _CACHE:
    with jax.ensure_compile_time_eval():
      keys = jax.random.split(jax.random.key(len(_CACHE)), len(shapes_stds))
      ws = [std * jax.random.truncated_normal(k, -3.0, 3.0, shape, jnp.float32) for k, (shape, std) in zip(keys, shapes_stds)]
      _CACHE[key] = jax.tree.map(np.asarray, fn(*ws))
  return jax.tree.map(jnp.asarray, _CACHE[key])


def install():
  """Replace the step's weight copies by constants (see the module's doc); call before the step traces."""
  mlp_weights, qkv_weights, quantize_tensor = fp8_mlp.mlp_weights, fp8_mlp.qkv_weights, fp8_mlp.quantize_tensor

  def mlp_weights_const(w13_D2F, w2_FD):
    std = math.sqrt(2.0 / (w13_D2F.shape[-3] + w2_FD.shape[-2]))
    return _stand_in(("mlp", w13_D2F.shape, w2_FD.shape), mlp_weights, (w13_D2F.shape, std), (w2_FD.shape, std))

  def qkv_weights_const(w_DE, qh=None, fp8_dh=False):
    d, e = w_DE.shape[-2:]
    qh_c = None if qh is None else (qh.shape, 20.0)   # (made inside the eager evaluation)
    return _stand_in(("qkv", w_DE.shape, fp8_dh, qh is None),
                     lambda w: qkv_weights(w, None if qh_c is None else jnp.full(*qh_c, jnp.float32), fp8_dh),
                     (w_DE.shape, math.sqrt(2.0 / (d + e // 3))))

  def quantize_tensor_const(w):
    if w.ndim == 2 and w.shape[0] > 4 * w.shape[1]:   # the head's [V, D] weight (head_logits)
      return _stand_in(("head", w.shape), quantize_tensor, (w.shape, math.sqrt(2.0 / sum(w.shape))))
    return quantize_tensor(w)

  fp8_mlp.mlp_weights, fp8_mlp.qkv_weights = mlp_weights_const, qkv_weights_const
  fp8_mlp.quantize_tensor = quantize_tensor_const
