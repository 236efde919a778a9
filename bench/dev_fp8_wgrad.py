"""Dev probe (not the product): W13's weight gradient in bf16 against e4m3 (model.mlp_fp8_wgrad) at
the speedrun shape, piece by piece, on the GPU.

  python bench/dev_fp8_wgrad.py [--tokens=32768] [--sweep] [--out=FILE]

Times (ms a call, best of 3 loops of --calls asynchronous calls; transpose_fp8 as 8 calls on
distinct inputs inside one jit, since alone it is shorter than a dispatch): the bf16 dot h^T dH13 as fp8_mlp.mlp_sublayer runs it; the e4m3 dot of the two
token-last copies; swiglu_kernel.transpose_fp8 for each copy (with --sweep, over its tile and warps);
the SwiGLU backward with and without its bf16 dH13; and the whole weight-gradient path both ways
(backward kernel + dot, against backward kernel without dH13 + scale + two transposes + dot).
"""
import argparse
import datetime
import itertools
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fp8_mlp  # pylint: disable=wrong-import-position
import swiglu_kernel  # pylint: disable=wrong-import-position


def timed_batch(f, args_list, calls=20):
  """ms per f call, f run on each of len(args_list) distinct inputs inside one jit: the launches of a
  short kernel sit back to back on the GPU instead of behind one dispatch each."""
  g = jax.jit(lambda *xs: [f(*x) for x in xs])
  return timed(g, *args_list, calls=calls) / len(args_list)


def timed(f, *args, calls=100):
  jax.block_until_ready(f(*args))
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = f(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t0) / calls)
  return 1e3 * best


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--tokens", type=int, default=32768)
  p.add_argument("--d", type=int, default=512)
  p.add_argument("--f", type=int, default=1344)
  p.add_argument("--calls", type=int, default=100)
  p.add_argument("--sweep", action="store_true")
  p.add_argument("--out", default="")
  a = p.parse_args()
  N, D, F = a.tokens, a.d, a.f
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  h = jax.random.normal(k[0], (N, D), jnp.bfloat16)
  h13 = (jax.random.normal(k[2], (N, 2 * F)) * 300).astype(jnp.bfloat16)
  s13 = jnp.full((1,), 3e-4, jnp.float32)
  hs = s13 * jnp.max(jnp.abs(h.astype(jnp.float32)), -1) / 448   # the norm kernel's row scales
  da = (jax.random.normal(k[4], (N, F)) * 50).astype(jnp.bfloat16)
  das = jax.random.uniform(k[5], (N,), minval=1e-6, maxval=1e-4)
  dh13, dh8, dhs = jax.jit(swiglu_kernel.backward_fp8)(h13, hs, da, das, s13)
  rows = []

  def row(name, ms, **kw):
    rows.append(dict(name=name, ms=ms, **kw))
    print(f"{name:60s} {1e3 * ms:8.1f} us", flush=True)

  row("bf16 dot h^T dH13 -> f32", timed_batch(lambda x, y: jnp.dot(x.T, y, preferred_element_type=jnp.float32),
                                              [(h * (1 + i / 64), dh13) for i in range(4)]))
  qmul = s13 / jnp.max(hs * dhs)   # mlp_sublayer's scale: realistic e4m3 values (the dot's power depends on them)
  h8T = jax.jit(swiglu_kernel.transpose_fp8)(h, dhs, qmul)
  dh8T = jax.jit(swiglu_kernel.transpose_fp8)(dh8)
  row("e4m3 dot of token-last copies -> f32", timed_batch(lambda x, y: fp8_mlp.dot8(x, y, 1, out=jnp.float32),
                                                         [(h8T, dh8T)] + [(-h8T, dh8T)] * 3))
  # In a loop of asynchronous calls a kernel this short is partly launch-bound: compare tiles here,
  # take absolute times from a step's profile (bench_train.py --profile).
  copies = 8   # distinct inputs per timed call (timed_batch)
  flip = lambda x8, i: jax.lax.bitcast_convert_type(  # pylint: disable=unnecessary-lambda-assignment
      jax.lax.bitcast_convert_type(x8, jnp.uint8) ^ jnp.uint8(i), jnp.float8_e4m3fn)
  # The step's four copies a layer: dH13's and act's e4m3 bytes (act [N, F]: the first F columns of
  # dH13's copy stand in for it), h's and dY's scaled copies of a bf16 [N, D] array.
  batches = [("bytes", f"dH13 e4m3 [{N},{2 * F}]", [(flip(dh8, i),) for i in range(copies)]),
             ("bytes", f"act e4m3 [{N},{F}]", [(flip(dh8[:, :F], i),) for i in range(copies)]),
             ("scaled", f"h bf16 -> scaled e4m3 [{N},{D}]", [(h * (1 + i / 64), dhs, qmul) for i in range(copies)])]
  for kind, what, args in batches:
    default = swiglu_kernel.TRANSPOSE[kind]
    configs = [default]
    if a.sweep:
      configs += [c for c in itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (False, True)) if c != default]
    for cfg in configs:
      swiglu_kernel.TRANSPOSE[kind] = cfg
      row(f"transpose_fp8 {cfg}: {what}", timed_batch(swiglu_kernel.transpose_fp8, args), tile=list(cfg), what=kind,
          shape=what)
    swiglu_kernel.TRANSPOSE[kind] = default
  for write in (True, False):
    row(f"SwiGLU backward, write_dh13={write}",
        timed(jax.jit(lambda *x, w=write: swiglu_kernel.backward_fp8(*x, write_dh13=w)), h13, hs, da, das, s13,
              calls=a.calls))

  def bf16_path(h, h13, hs, da, das):
    dh13, dh8, dhs = swiglu_kernel.backward_fp8(h13, hs, da, das, s13)
    return jnp.dot(h.T, dh13, preferred_element_type=jnp.float32), dh8, dhs

  def fp8_path(h, h13, hs, da, das):
    _, dh8, dhs = swiglu_kernel.backward_fp8(h13, hs, da, das, s13, write_dh13=False)
    return fp8_mlp.wgrad_kernels(h, hs, dh8, dhs, s13), dh8, dhs

  outs = []
  for name, f in (("whole path, bf16 weight gradient", bf16_path), ("whole path, e4m3 weight gradient", fp8_path)):
    row(name, timed(jax.jit(f), h, h13, hs, da, das, calls=a.calls))
    outs.append(jax.jit(f)(h, h13, hs, da, das)[0])
  rel = float(jnp.linalg.norm(outs[1] - outs[0]) / jnp.linalg.norm(outs[0]))
  print(f"e4m3 weight gradient vs bf16: rel. Frobenius error {rel:.2e}")
  if a.out:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with open(a.out, "w") as fh:
      json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, date=datetime.datetime.now(
          datetime.timezone.utc).isoformat(timespec="seconds"), commit=commit, command=" ".join(sys.argv),
                     tokens=N, d=D, f=F, rows=rows, wgrad_rel_err_vs_bf16=rel), fh, indent=1)


if __name__ == "__main__":
  main()
