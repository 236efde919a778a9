"""Dev probe (GPU, not the product): the attention projections' bf16 dots alone at the speedrun shape
(B128 x T256, D512, 16 heads of 32), and the weight gradients with the token sum split into S
chunks (a batched dot, then a sum of the S fp32 partials), against the dot as model.py writes it.

  python bench/dev_proj_grads.py [--out=FILE]

Why: in the step's profile (bench/results/h100_session30/call4) Wo's weight gradient o^T dY, 17 GFLOP
with a 512 x 512 output and a 32768-token sum, took 88 us a layer (~200 TFLOP/s), where the
forward's o Wo, the same FLOPs, took 27 us. Times are device time from a profiler trace
(bench/dev_memory_kernels.device_ms: every kernel of the call, the partials' sum included).
"""
import argparse
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from bench_train import _git_commit  # pylint: disable=wrong-import-position
from dev_memory_kernels import device_ms  # pylint: disable=wrong-import-position

B, T, D, H = 128, 256, 512, 16
N, K = B * T, D // H


def split_wgrad(x_NA, dy_NB, s):
  """x^T dy summed over the N rows in s chunks: one batched dot, then the chunks' fp32 sum."""
  if s == 1:
    return jnp.dot(x_NA.T, dy_NB, preferred_element_type=jnp.float32)
  xs, dys = x_NA.reshape(s, -1, x_NA.shape[1]), dy_NB.reshape(s, -1, dy_NB.shape[1])
  return jnp.einsum("sna,snb->sab", xs, dys, preferred_element_type=jnp.float32).sum(0)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="")
  a = p.parse_args()
  k = jax.random.split(jax.random.PRNGKey(0), 5)
  o = jax.random.normal(k[0], (B, T, H, K), jnp.bfloat16)
  dy = jax.random.normal(k[1], (B, T, D), jnp.bfloat16)
  wo = (jax.random.normal(k[2], (H, K, D)) * 0.02).astype(jnp.bfloat16)
  h = jax.random.normal(k[3], (N, D), jnp.bfloat16)
  dqkv = jax.random.normal(k[4], (N, 3 * D), jnp.bfloat16)
  wqkv = (jax.random.normal(k[2], (D, 3 * D)) * 0.02).astype(jnp.bfloat16)
  rows = []

  def row(name, fn, *args, flops):
    ms, by = device_ms(fn, *args)
    rows.append(dict(name=name, ms=ms, TFLOP_per_s=flops / ms / 1e9, kernels_ms=by))
    print(f"{name:55s} {ms * 1e3:7.1f} us {flops / ms / 1e9:6.0f} TFLOP/s  "
          f"{ {n[:44]: round(v * 1e3, 1) for n, v in by.items()} }", flush=True)

  f_wo, f_qkv = 2 * N * D * D, 2 * N * D * 3 * D
  row("Wo forward o Wo (model.out_proj)", lambda x, w: jnp.einsum("bthk,hkd->btd", x, w), o, wo, flops=f_wo)
  row("Wo input gradient dY Wo^T", lambda g, w: jnp.einsum("btd,hkd->bthk", g, w), dy, wo, flops=f_wo)
  row("Wo weight gradient o^T dY, as model._out_proj_bwd", lambda x, g: jnp.einsum("bthk,btd->hkd", x, g), o, dy,
      flops=f_wo)
  for s in (1, 2, 4, 8, 16):
    row(f"Wo weight gradient, fp32 out, split {s}",
        lambda x, g, s=s: split_wgrad(x.reshape(N, D), g.reshape(N, D), s), o, dy, flops=f_wo)
  row("Wqkv input gradient dQKV w^T (fp8_mlp._qkv_bwd)", lambda g, w: jnp.dot(g, w.T), dqkv, wqkv, flops=f_qkv)
  for s in (1, 2, 4, 8):
    row(f"Wqkv weight gradient h^T dQKV, fp32 out, split {s}", lambda x, g, s=s: split_wgrad(x, g, s), h, dqkv,
        flops=f_qkv)
  if a.out:
    with open(a.out, "w") as fh:
      json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                     date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     git_commit=_git_commit(), command=" ".join(["bench/dev_proj_grads.py"] + sys.argv[1:]),
                     rows=rows), fh, indent=1)


if __name__ == "__main__":
  main()
