"""The model's attention call (packed QKV + RoPE, attention_kernel.flash_attention_rope), forward +
backward through jax-triton, with the split backward kernels against the fused one and its configs.

  python bench/bench_attention_rope.py [--shapes=128,16,256,32] [--sweep] [--configs=64,64,4,2,2] [--out=...]

For each shape B,H,T,K it times jit(vjp) of flash_attention_rope (forward, then dQKV) with
`fused=False` (delta kernel + dK/dV kernel + dQ kernel) and with the fused kernel at its default
config; --sweep adds every fused config in SWEEP (BLOCK_M, BLOCK_N, warps, stages, programs per SM).
Each variant's dQKV is compared with the split kernels' (max abs difference, bf16), so a fast
config that is wrong shows. Timing: bench_attention.time_fn (median of --reps, queue kept full).
Writes bench/results/attention_rope_<device>.json.
"""
import argparse
import datetime
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

import attention_kernel
import model
from bench_attention import time_fn, write_json  # pylint: disable=g-import-not-at-top

SWEEP = [(m, n, w, s, p) for m, n in ((32, 32), (32, 64), (32, 128), (64, 64), (64, 128))
         for w in (4, 8) for s in (1, 2) for p in (1, 2, 4)]


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--shapes", default="128,16,256,32", help="B,H,T,K;B,H,T,K")
  ap.add_argument("--sweep", action="store_true", help="also time every config in SWEEP")
  ap.add_argument("--configs", default="", help="fused configs to time too: M,N,warps,stages,per_sm;...")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
  rows = []
  for b, h, t, d in shapes:
    k1, k2 = jax.random.split(jax.random.PRNGKey(t))
    qkv = jax.random.normal(k1, (b, t, 3, h, d), jnp.bfloat16)
    do = jax.random.normal(k2, (b, t, h, d), jnp.bfloat16)
    cos, sin = model.rope_tables(t, d, 10_000.0)
    variants = [("split", False), ("fused default", None)]
    extra = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";") if c]
    extra += [c for c in SWEEP if c[1] % c[0] == 0] if args.sweep else []
    variants += [(f"fused {c}", c) for c in extra]

    def fwd_bwd(qkv, do, fused):
      o, vjp = jax.vjp(lambda x: attention_kernel.flash_attention_rope(x, cos, sin, fused=fused), qkv)
      return o, vjp(do)[0]

    ref = None
    print(f"B={b} H={h} T={t} K={d}: default fused config {attention_kernel.fused_config(t, d)}", flush=True)
    for name, fused in variants:
      row = dict(B=b, H=h, T=t, K=d, variant=name, fused=list(fused) if isinstance(fused, tuple) else fused)
      try:
        f = jax.jit(lambda q, g, fused=fused: fwd_bwd(q, g, fused))
        out = jax.block_until_ready(f(qkv, do))
        if ref is None:
          ref = out
        row["max_abs_diff_dqkv_vs_split"] = float(jnp.max(jnp.abs(out[1].astype(jnp.float32) -
                                                                  ref[1].astype(jnp.float32))))
        row["finite"] = bool(np.all(np.isfinite(np.asarray(out[1], np.float32))))
        row["ms_fwd_bwd"] = 1e3 * time_fn(f, (qkv, do), args.reps)
        print(f"  {name:34s} {row['ms_fwd_bwd']:7.3f} ms  max|d dqkv| {row['max_abs_diff_dqkv_vs_split']:.3g}",
              flush=True)
      except Exception as e:  # pylint: disable=broad-except
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"  {name:34s} failed: {row['error'][:200]}", flush=True)
      rows.append(row)
  dev = re.sub(r"[^A-Za-z0-9]+", "_", jax.devices()[0].device_kind).strip("_").lower()
  out = args.out or os.path.join(ROOT, "bench", "results", f"attention_rope_{dev}.json")
  write_json(out, rows, [(b, h, t, d) for b, h, t, d in shapes])
  with open(out) as f:
    res = json.load(f)
  res["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  res["method"] = __doc__
  with open(out, "w") as f:
    json.dump(res, f, indent=1)
  print("wrote", out)


if __name__ == "__main__":
  main()
