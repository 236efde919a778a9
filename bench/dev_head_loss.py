"""Dev benchmark (GPU): the LM head + cross-entropy, forward and backward, at the speedrun shape
(32k tokens x D512 x V10k, tied, bf16): xent_kernel.head_cross_entropy (all rows at once) against
the same kernel over chunks of rows, defined here (`chunked`: each chunk's head matmul, loss
kernel and two gradient matmuls back to back, the weight gradient summed in fp32), to see whether
keeping a chunk's logits in L2 instead of 655 MB crossing DRAM pays (it did not: the results file
and docs/model.md).

  python bench/dev_head_loss.py [--chunks=0,1024,2048,4096,8192] [--out=FILE]

Each row: device time per call (kernel durations summed, from a profiler trace), wall time per
call (a timed loop, so launch gaps and loop overheads count), the kernels by name, and the
relative error of the loss and both gradients against the unchunked path. JSON (device, date,
commit, command, rows) to bench/results/head_loss_<device>.json.
"""
import argparse
import datetime
import functools
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

import xent_kernel  # pylint: disable=wrong-import-position
from bench_train import _git_commit  # pylint: disable=wrong-import-position
from dev_memory_kernels import device_ms  # pylint: disable=wrong-import-position

B, T, D, V = 128, 256, 512, 10_000
UNROLL = True   # the chunks as unrolled code (True) or a while loop (False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def chunked(h_BTD, w_VD, targets_BT, chunk_rows):
  """mean cross-entropy of the tied head, as xent_kernel.head_cross_entropy, chunk_rows rows at a time."""
  return _chunked_fwd(h_BTD, w_VD, targets_BT, chunk_rows)[0]


def _chunked_fwd(h_BTD, w_VD, targets_BT, chunk_rows):
  N, C = B * T, chunk_rows

  def chunk(dw_acc, xs):
    h_CD, t_C = xs
    # The gradient is of the mean over all N tokens, not over the chunk's.
    loss_C, d_CV = xent_kernel._rows(h_CD @ w_VD.T, t_C, 0.0, True, scale=1.0 / N)  # pylint: disable=protected-access
    dw_acc = dw_acc + jnp.einsum("nv,nd->vd", d_CV, h_CD, preferred_element_type=jnp.float32)
    return dw_acc, (loss_C, d_CV @ w_VD)

  xs = (h_BTD.reshape(N // C, C, D), targets_BT.reshape(N // C, C))
  dw, (loss, dh) = jax.lax.scan(chunk, jnp.zeros(w_VD.shape, jnp.float32), xs, unroll=UNROLL)
  return jnp.mean(loss), (dh.reshape(B, T, D), dw.astype(w_VD.dtype))


def _chunked_bwd(chunk_rows, res, g):  # pylint: disable=unused-argument
  dh, dw = res
  return dh * g.astype(dh.dtype), dw * g.astype(dw.dtype), None


chunked.defvjp(_chunked_fwd, _chunked_bwd)


def wall_ms(f, *args, n=50):
  jax.block_until_ready(f(*args))
  t0 = time.perf_counter()
  for _ in range(n):
    out = f(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / n * 1e3


def _err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
  global UNROLL  # pylint: disable=global-statement  (read by _chunked_fwd when a setting is traced)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--chunks", default="0,1024,2048,4096,8192")
  p.add_argument("--unroll", default="1,0", help="1: python-unrolled chunks; 0: a while loop")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  dev = jax.devices()[0]
  device = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
  out = args.out or os.path.join(ROOT, "bench", "results", f"head_loss_{device}.json")
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(k1, (B, T, D), jnp.float32).astype(jnp.bfloat16)
  w32 = jax.random.normal(k2, (V, D), jnp.float32) * 0.05   # the fp32 master, cast in the step as in model.py
  targets = jax.random.randint(k3, (B, T), 0, V)

  def grads_fn(chunk):
    def loss(h, w, t):
      if chunk:
        return chunked(h, w.astype(jnp.bfloat16), t, chunk)
      return xent_kernel.head_cross_entropy("btd,vd->btv", h, w.astype(jnp.bfloat16), t, 0.0)
    return lambda h, w32, t: jax.value_and_grad(loss, argnums=(0, 1))(h, w32, t)

  result = {"device": dev.device_kind, "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "command": " ".join(["bench/dev_head_loss.py"] + sys.argv[1:]),
            "shape": dict(B=B, T=T, D=D, V=V), "rows": []}
  print(f"{dev.device_kind}; jax {jax.__version__}", flush=True)
  ref = None
  for chunk in (int(c) for c in args.chunks.split(",")):
    for unroll in ((1,) if chunk == 0 else tuple(int(u) for u in args.unroll.split(","))):
      UNROLL = bool(unroll)
      loss_grads = grads_fn(chunk)
      f = jax.jit(loss_grads)
      try:
        got = jax.block_until_ready(f(h, w32, targets))
        ms, by = device_ms(loss_grads, h, w32, targets)
        wall = wall_ms(f, h, w32, targets)
      except Exception as e:  # pylint: disable=broad-except
        print(f"chunk {chunk} unroll {unroll} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        continue
      if ref is None:
        ref = got
      errs = dict(loss=_err(got[0], ref[0]), dh=_err(got[1][0], ref[1][0]), dw=_err(got[1][1], ref[1][1]))
      row = dict(chunk_rows=chunk, unroll=bool(unroll), device_ms=ms, wall_ms=wall, rel_err_vs_unchunked=errs,
                 kernels_ms={k: round(v, 4) for k, v in sorted(by.items(), key=lambda kv: -kv[1])})
      result["rows"].append(row)
      print(f"chunk {chunk:5d} unroll {unroll}: device {ms:.3f} ms  wall {wall:.3f} ms  err {errs}  "
            f"{ {k[:44]: round(v * 1e3, 1) for k, v in list(row['kernels_ms'].items())[:8]} }", flush=True)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
