"""Development probe: device time of the pieces of one training step at the speedrun shape (B128).

  python bench/dev_components.py [--backend=triton]

Each piece is jitted alone (value + grad where it has one) and timed on random inputs, so the sum
over pieces shows where the step's time goes and what a fused kernel could save. Prints a table and
writes bench/results/components_<device>.json.
"""
import argparse
import datetime
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import model  # pylint: disable=wrong-import-position
from configs import tinystories_h100  # pylint: disable=wrong-import-position


def timeit(fn, *args, n=20, repeats=5):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / n)
  return 1e3 * float(np.median(times))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--backend", default="triton")
  p.add_argument("--batch", type=int, default=128)
  args = p.parse_args()
  cfg = tinystories_h100.get_config().model
  cfg.attention_backend = args.backend
  B, T, D, V = args.batch, cfg.context_length, cfg.d_model, cfg.vocab_size
  H, K, F = cfg.n_heads, D // cfg.n_heads, cfg.d_ff
  bf = jnp.bfloat16
  key = jax.random.key(0)
  params = jax.jit(lambda k: model.init_params(k, cfg))(key)
  blk = jax.tree.map(lambda a: a[0], params["blocks"])
  x_BTD = jax.random.normal(key, (B, T, D), jnp.float32)
  h_BTD = x_BTD.astype(bf)
  tok_BT = jax.random.randint(key, (B, T), 0, V)
  rope = model.rope_tables(T, K, cfg.rope_theta)
  rows = []

  def add(name, fn, *a):
    ms = timeit(jax.jit(fn), *a)
    rows.append((name, ms))
    print(f"{name:<44} {ms:8.3f} ms", flush=True)

  def vg(f, argnums=0):
    return jax.value_and_grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=argnums)

  add("full loss+grad (model.loss_fn)", jax.value_and_grad(lambda p: model.loss_fn(p, tok_BT, tok_BT, cfg)), params)
  add("full forward loss only", lambda p: model.loss_fn(p, tok_BT, tok_BT, cfg), params)
  add("head xent fwd+bwd (h, W)", jax.value_and_grad(
      lambda h, w: model._head_cross_entropy("btd,vd->btv", h, w, tok_BT), argnums=(0, 1)),  # pylint: disable=protected-access
      h_BTD, params["embed"].astype(bf))
  add("head logits matmul fwd only (bf16 out)", lambda h, w: jnp.einsum("btd,vd->btv", h, w), h_BTD,
      params["embed"].astype(bf))
  add("block fwd+bwd (x, params)", vg(lambda x, p: model.block(p, x, rope, cfg), (0, 1)), x_BTD, blk)
  add("attention sublayer fwd+bwd", vg(lambda h, p: model._mha(p, h, rope, cfg, bf), (0, 1)), h_BTD, blk)  # pylint: disable=protected-access
  add("swiglu sublayer fwd+bwd", vg(lambda h, p: model.swiglu(p, h, bf), (0, 1)), h_BTD, blk)
  add("rms_norm fwd+bwd", vg(lambda x, g: model.rms_norm(x, g, bf), (0, 1)), x_BTD, blk["attn_norm"])
  q_BTHK = jax.random.normal(key, (B, T, H, K), bf)
  add("attention core fwd+bwd (q,k,v)", vg(lambda q, k, v: model.attention(q, k, v, args.backend), (0, 1, 2)),
      q_BTHK, q_BTHK, q_BTHK)
  add("rope fwd+bwd (q)", vg(lambda q: model.apply_rope(q, *rope)), q_BTHK)
  add("qkv matmul fwd+bwd", vg(lambda h, w: jnp.einsum("btd,dshk->btshk", h, w.astype(bf)), (0, 1)), h_BTD, blk["wqkv"])
  add("w13 matmul fwd+bwd", vg(lambda h, w: jnp.einsum("btd,dsf->btsf", h, w.astype(bf)), (0, 1)), h_BTD, blk["w13"])
  n_params = sum(x.size for x in jax.tree.leaves(params))
  add("adamw-like pass over params (7 arrays)", lambda a, b, c: jax.tree.map(
      lambda x, y, z: (x * 0.9 + y, z * 0.95 + y * y, x - 1e-3 * y / (jnp.sqrt(z) + 1e-8)), a, b, c),
      params, params, params)
  dev = jax.devices()[0]
  name = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
  out = os.path.join(ROOT, "bench", "results", f"components_{name}.json")
  with open(out, "w") as f:
    json.dump({"device": dev.device_kind, "jax": jax.__version__, "backend": args.backend, "batch": B,
               "n_params": int(n_params), "command": " ".join(sys.argv),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "ms": dict(rows)}, f, indent=2)
  print("wrote", out)


if __name__ == "__main__":
  main()
