"""Dev benchmark (GPU): the LM head's two backward dots at the speedrun shape, under operand layouts.

The step's profile has the head's dX = U w (U = dlogits [32768, 10112] bf16, w [10112, 512]) at
~0.70 ms, 484 TFLOP/s, where its weight gradient U^T h, the same FLOPs, takes ~0.50 ms. cuBLAS runs
dX as an "NN" GEMM: w's reduction axis (the vocabulary) is its outer one. This times each dot as
the model writes it against variants whose operands are laid out otherwise (a transposed copy of
w or h, materialized behind an optimization_barrier so XLA cannot fold the transpose back into the
dot), the output in fp32, and the reduction split in two, to see whether any layout gets cuBLAS's
faster kernels.

  python bench/dev_head_layouts.py [--out=FILE]

Each row: ms of GPU kernels per call (profiler), TFLOP/s, and the kernels by name. JSON (device,
date, commit, command, rows) to --out.
"""
import argparse
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from bench_train import _git_commit  # pylint: disable=wrong-import-position
from dev_memory_kernels import device_ms, rand  # pylint: disable=wrong-import-position

N, V, D = 128 * 256, 10_112, 512
barrier = jax.lax.optimization_barrier


def cases():
  """(name, fn, args): each fn returns the dot's result (and whatever copy it made)."""
  u, w, h = rand(0, (N, V), scale=1e-4), rand(1, (V, D), scale=0.02), rand(2, (N, D))
  wt, ht = w.T, h.T   # eager: materialized [D, V] and [D, N] copies, made once outside the timed dots
  yield "dx = U w (as the model)", lambda u, w: u @ w, (u, w)
  yield "dx, w^T copy given [D, V]", lambda u, wt: u @ wt.T, (u, wt)
  yield "dx, w^T copy made inside", lambda u, w: u @ barrier(w.T).T, (u, w)
  yield "dx, fp32 output", lambda u, w: jnp.dot(u, w, preferred_element_type=jnp.float32), (u, w)
  yield "dx, reduction split in 2", (lambda u, w: (jnp.dot(u[:, :V // 2], w[:V // 2], preferred_element_type=jnp.float32)
                                                  + jnp.dot(u[:, V // 2:], w[V // 2:], preferred_element_type=jnp.float32)
                                                  ).astype(jnp.bfloat16)), (u, w)
  yield "dx^T = w^T U^T, output [D, N]", lambda u, w: jnp.einsum("vd,nv->dn", w, u), (u, w)
  yield "dw = U^T h (as the model)", lambda u, h: jnp.einsum("nv,nd->vd", u, h), (u, h)
  yield "dw, h^T copy given [D, N]", lambda u, ht: jnp.einsum("nv,dn->vd", u, ht), (u, ht)
  yield "dw^T = h^T U, output [D, V]", lambda u, h: jnp.einsum("nv,nd->dv", u, h), (u, h)
  yield "dw, fp32 output", lambda u, h: jnp.einsum("nv,nd->vd", u, h, preferred_element_type=jnp.float32), (u, h)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  rows = []
  for name, fn, fargs in cases():
    ms, by = device_ms(fn, *fargs)
    tflops = 2 * N * V * D / (ms / 1e3) / 1e12
    top = sorted(by.items(), key=lambda kv: -kv[1])[:3]
    rows.append({"case": name, "ms": ms, "tflops": tflops, "kernels": {k: round(v, 4) for k, v in top}})
    print(f"{name:34s} {ms:7.3f} ms {tflops:6.0f} TFLOP/s  " + ", ".join(f"{k} {v:.3f}" for k, v in top), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "date": datetime.date.today().isoformat(),
                 "commit": _git_commit(), "command": "python " + " ".join(sys.argv), "rows": rows}, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
