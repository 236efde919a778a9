"""Session 41, CPU: the gradient error bench/dev_qkv_grad_sim.py's FP8 rounding of x Wqkv's backward
adds, next to the errors the tree's FP8 paths already carry. A 2-layer d128 model (4 heads, T 32,
vocab 300, random init with non-zero output projections so the attention gets a gradient), one batch;
relative l2 error of each block weight's gradient against a reference.

  python bench/results/h100_session41/cpu_check/qkv_grad_error.py
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import dev_qkv_grad_sim as sim  # pylint: disable=wrong-import-position
import fp8_mlp  # pylint: disable=wrong-import-position
import model  # pylint: disable=wrong-import-position

cfg = model.default_model_config()
cfg.update(dict(vocab_size=300, context_length=32, d_model=128, n_layers=2, n_heads=4, d_ff=320,
                attn_fp8=True, compute_dtype="bfloat16", zero_init_out=False))
params = model.init_params(jax.random.PRNGKey(0), cfg)
tok = jax.random.randint(jax.random.PRNGKey(1), (4, 33), 0, 300)
KEYS = ("wqkv", "wo", "w13", "w2")


def grads(**kw):
  c = cfg.copy_and_resolve_references()
  c.update(kw)
  return jax.grad(lambda p: model.loss_fn(p, tok[:, :-1], tok[:, 1:], c))(params)


def rel(a, b):
  return {k: round(float(np.linalg.norm(np.float64(a["blocks"][k]) - np.float64(b["blocks"][k]))
                         / np.linalg.norm(np.float64(a["blocks"][k]))), 4) for k in KEYS}


tree = grads()   # attn_fp8 as the speedrun config has it, MLP in bf16
for fmt in sim.FORMATS:
  fp8_mlp.qkv_dot.defvjp(fp8_mlp._qkv_fwd, sim.simulated_bwd(fmt))   # pylint: disable=protected-access
  print(f"dQKV in {fmt} (one scale) vs attn_fp8 as is:", rel(tree, grads()))
fp8_mlp.qkv_dot.defvjp(fp8_mlp._qkv_fwd, fp8_mlp._qkv_bwd)   # pylint: disable=protected-access
bf16 = grads(attn_fp8=False)
print("attn_fp8 (x Wqkv forward in e4m3) vs bf16:", rel(bf16, tree))
print("the same + the MLP's six FP8 dots vs bf16:", rel(bf16, grads(mlp_fp8=True, mlp_fp8_w2=True, mlp_fp8_wgrad=True,
                                                                 mlp_fp8_wgrad_w2=True)))
