"""Dev tool (GPU): runs each of the step's own Triton kernels once at the speedrun shape, so that
Nsight Compute can read its hardware counters (what bounds it: DRAM, issue slots, the exp unit,
latency, occupancy). The device-time benchmarks (dev_memory_kernels.py) say how long a kernel
takes; this says why.

  ncu --clock-control none --set full -k regex:'_kernel$' -o /tmp/kernels \\
      python bench/dev_ncu_kernels.py [--only=attn,xent,swiglu,norm]
  ncu -i /tmp/kernels.ncu-rep --page details --csv > details.csv

Each kernel runs in the model's layout with the step's constants (attention_kernel.block_config,
xent_kernel's block, the FP8 SwiGLU backward's rows and warps), on random inputs of the step's
scale. One jitted call per group: the first launch of each kernel is the one ncu profiles.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

import attention_kernel  # pylint: disable=wrong-import-position
import model  # pylint: disable=wrong-import-position
import norm_kernel  # pylint: disable=wrong-import-position
import swiglu_kernel  # pylint: disable=wrong-import-position
import xent_kernel  # pylint: disable=wrong-import-position

B, T, D, F, V, H = 128, 256, 512, 1344, 10_000, 16
N, K = B * T, D // H


def rand(key, shape, dtype=jnp.bfloat16, scale=1.0):
  return (scale * jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)).astype(dtype)


def attn():
  """RoPE, the forward and both backward kernels of flash_attention_rope (the step's attention)."""
  qkv, do = rand(0, (B, T, 3, H, K)), rand(1, (B, T, H, K))
  cos, sin = model.rope_tables(T, K, 10_000.0)
  f = lambda x, dy: jax.vjp(lambda x: attention_kernel.flash_attention_rope(x, cos, sin), x)[1](dy)  # pylint: disable=unnecessary-lambda-assignment
  return f, (qkv, do)


def xent():
  logits, targets = rand(2, (N, V), scale=2.0), jax.random.randint(jax.random.PRNGKey(3), (N,), 0, V)
  return (lambda z, t: xent_kernel._rows(z, t, 0.0, True)), (logits, targets)  # pylint: disable=protected-access


def swiglu():
  """The FP8 MLP's SwiGLU forward gate and backward (unscaled inputs with row scales, as
  dev_memory_kernels.py)."""
  h13, da = rand(4, (N, 2 * F), scale=300.0), rand(5, (N, F), scale=50.0)
  hs, das = jnp.full((N,), 0.01, jnp.float32), jnp.full((N,), 0.02, jnp.float32)
  f = lambda h13, hs, da, das, q: (swiglu_kernel.forward_fp8(h13, hs, q), swiglu_kernel.backward_fp8(h13, hs, da, das, q))  # pylint: disable=unnecessary-lambda-assignment
  return f, (h13, hs, da, das, jnp.ones((1,), jnp.float32))


def norm():
  """add + RMSNorm forward and backward on the bf16 stream."""
  x, y, dxo, dh = (rand(6 + i, (B, T, D)) for i in range(4))
  g = 1 + 0.1 * rand(10, (D,), jnp.float32)
  f = lambda x, y, g, dxo, dh: jax.vjp(  # pylint: disable=unnecessary-lambda-assignment
      lambda x, y, g: norm_kernel.add_rms_norm(x, y, g, jnp.bfloat16), x, y, g)[1]((dxo, dh))
  return f, (x, y, g, dxo, dh)


GROUPS = {"attn": attn, "xent": xent, "swiglu": swiglu, "norm": norm}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", default=",".join(GROUPS))
  p.add_argument("--calls", type=int, default=1, help="jitted calls per group (ncu profiles the first)")
  args = p.parse_args()
  print(jax.devices()[0].device_kind, flush=True)
  for name in args.only.split(","):
    fn, inputs = GROUPS[name]()
    f = jax.jit(fn)
    for _ in range(args.calls):
      jax.block_until_ready(f(*inputs))
    print(f"{name}: ran {args.calls} call(s)", flush=True)


if __name__ == "__main__":
  main()
