"""Dev benchmark (GPU): the step's memory-bound kernels alone, XLA against our Triton kernels, with
a sweep of each kernel's block/warp/grid constants, at the speedrun shape (B128 x T256, D512,
F1344, V10k, 16 heads of 32).

  python bench/dev_memory_kernels.py [--only=norm,swiglu,swiglu_fp8,swiglu_fwd_fp8,xent,rope,head,attn] [--out=FILE]

Device time per call comes from a jax.profiler trace (kernel durations summed, launch gaps
excluded), with the bytes each call must move and the bandwidth that implies. Prints a table and
writes JSON (device, date, commit, command, rows) to bench/results/memory_kernels_<device>.json.
"""
import argparse
import datetime
import glob
import itertools
import json
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import attention_kernel  # pylint: disable=wrong-import-position
import model  # pylint: disable=wrong-import-position
import norm_kernel  # pylint: disable=wrong-import-position
import swiglu_kernel  # pylint: disable=wrong-import-position
import xent_kernel  # pylint: disable=wrong-import-position
from bench_train import _git_commit  # pylint: disable=wrong-import-position

B, T, D, F, V, H = 128, 256, 512, 1344, 10_000, 16
N, K = B * T, D // H
REPS = 20


def device_ms(fn, *args):
  """(ms of GPU kernels per call, {kernel: ms per call}) over REPS calls of jit(fn)(*args)."""
  f = jax.jit(lambda *a: fn(*a))   # a fresh function: traced anew with the module constants just set
  jax.block_until_ready(f(*args))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(REPS):
        out = f(*args)
      jax.block_until_ready(out)
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    planes = jax.profiler.ProfileData.from_file(files[0]).planes
  by = {}
  for plane in [p for p in planes if p.name.startswith("/device:")][:1]:
    for line in plane.lines:
      if line.name.startswith("Stream"):
        for e in line.events:
          by[e.name] = by.get(e.name, 0.0) + e.duration_ns / 1e6 / REPS
  return sum(by.values()), by


def header(script):
  """The JSON header every dev benchmark writes: device, jax, date, commit and the command that ran."""
  return {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "git_commit": _git_commit(), "command": " ".join([script] + sys.argv[1:])}


def write_json(result, out):
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {out}")


def rand(key, shape, dtype=jnp.bfloat16, scale=1.0):
  return (scale * jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)).astype(dtype)


def norm_cases():
  """Backward of add + RMSNorm (the forward runs too: it makes the residuals; ~28 us of it)."""
  x, y, dxo, dh = (rand(i, (B, T, D)) for i in range(4))
  g = 1 + 0.1 * rand(5, (D,), jnp.float32)

  def ref(x, y, g):
    s = (x.astype(jnp.float32) + y.astype(jnp.float32)).astype(x.dtype)
    s32 = s.astype(jnp.float32)
    return s, (s32 * jax.lax.rsqrt(jnp.mean(s32 * s32, -1, keepdims=True) + 1e-5) * g).astype(jnp.bfloat16)

  grad = lambda f: (lambda x, y, g, dxo, dh: jax.vjp(f, x, y, g)[1]((dxo, dh)))  # pylint: disable=unnecessary-lambda-assignment
  moved = 2 * N * D * 4 + 2 * N * D * 4   # fwd: x, y in, sum, h out; bwd: dxo, dh, sum in, one gradient out
  yield "xla", {}, grad(ref), (x, y, g, dxo, dh), moved
  for rows, warps, per_sm in ((8, 4, 2), (8, 4, 4), (16, 4, 2), (8, 8, 2), (8, 4, 10_000)):
    def setup(rows=rows, warps=warps, per_sm=per_sm):
      norm_kernel.BWD_ROWS, norm_kernel.BWD_WARPS, norm_kernel.BWD_PROGRAMS_PER_SM = rows, warps, per_sm
    yield "triton", dict(rows=rows, warps=warps, per_sm=per_sm, setup=setup), \
        grad(lambda x, y, g: norm_kernel.add_rms_norm(x, y, g, jnp.bfloat16)), (x, y, g, dxo, dh), moved


def swiglu_cases():
  h13, da = rand(0, (B, T, 2, F), scale=3.0), rand(1, (B, T, F))
  moved = N * F * 2 * 5   # gate, up, dA in; dgate, dup out
  ref = lambda h: jax.nn.silu(h[:, :, 0]) * h[:, :, 1]  # pylint: disable=unnecessary-lambda-assignment
  bwd = lambda f: (lambda h, d: jax.vjp(f, h)[1](d)[0])  # pylint: disable=unnecessary-lambda-assignment
  yield "xla", {}, bwd(ref), (h13, da), moved
  for br, bf, warps in ((32, 128, 8), (64, 128, 8), (16, 128, 4), (32, 64, 4), (16, 256, 8)):
    def setup(br=br, bf=bf, warps=warps):
      swiglu_kernel.BLOCK_R, swiglu_kernel.BLOCK_F, swiglu_kernel.NUM_WARPS = br, bf, warps
    yield "triton", dict(block_r=br, block_f=bf, warps=warps, setup=setup), bwd(swiglu_kernel.silu_mul), (h13, da), moved


def swiglu_fp8_cases():
  """fp8_mlp.py's SwiGLU backward (unscaled inputs with row scales; bf16 and e4m3 outputs), whole
  rows per program, against the bf16 kernel's tile layout (row 0 of swiglu_cases)."""
  h13, da = rand(0, (N, 2 * F), scale=300.0), rand(1, (N, F), scale=50.0)
  hs, das = jnp.full((N,), 0.01, jnp.float32), jnp.full((N,), 0.02, jnp.float32)
  qmul = jnp.ones((1,), jnp.float32)
  moved = N * F * 2 * 5 + N * 2 * F   # gate, up, dA in; dgate, dup out in bf16, and again in e4m3
  for rows, warps in ((2, 8), (1, 4), (2, 4), (4, 8), (1, 8), (4, 16)):
    def setup(rows=rows, warps=warps):
      swiglu_kernel.FP8_ROWS, swiglu_kernel.FP8_WARPS = rows, warps
    yield "triton", dict(rows=rows, warps=warps, setup=setup), swiglu_kernel.backward_fp8, (h13, hs, da, das, qmul), moved


def swiglu_fwd_fp8_cases():
  """fp8_mlp.py's forward gate with mlp_fp8_w2 (unscaled W13-dot output with row scales in; act in
  bf16 and in e4m3 with a row scale out), whole rows per program, against XLA's fusion that writes
  the bf16 act alone (what the step runs without mlp_fp8_w2)."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  h13, hs = rand(0, (N, 2 * F), scale=300.0), jnp.full((N,), 0.01, jnp.float32)
  qmul = jnp.ones((1,), jnp.float32)
  yield "xla", {}, lambda h, s: fp8_mlp.silu_mul_scaled(h, s, jnp.bfloat16), (h13, hs), N * F * 2 * 3
  moved = N * F * 2 * 3 + N * F   # gate, up in; act out in bf16, and again in e4m3
  for rows, warps in ((1, 8), (1, 4), (1, 2), (2, 4), (2, 8), (4, 8), (4, 16), (8, 16)):
    def setup(rows=rows, warps=warps):
      swiglu_kernel.FWD_FP8_ROWS, swiglu_kernel.FWD_FP8_WARPS = rows, warps
    yield "triton", dict(rows=rows, warps=warps, setup=setup), swiglu_kernel.forward_fp8, (h13, hs, qmul), moved


def xent_cases():
  """The kernel alone on given bf16 logits: loss and d(logits) (one read, one write)."""
  logits, targets = rand(0, (N, V), scale=2.0), jax.random.randint(jax.random.PRNGKey(1), (N,), 0, V)
  moved = 2 * N * V * 2

  def ref(z, t):
    z32 = z.astype(jnp.float32)
    lse = jax.nn.logsumexp(z32, -1)
    d = (jnp.exp(z32 - lse[:, None]) - jax.nn.one_hot(t, V)) / N
    return lse - jnp.take_along_axis(z32, t[:, None], -1)[:, 0], d.astype(z.dtype)

  yield "xla", {}, ref, (logits, targets), moved
  kern = lambda z, t: xent_kernel._rows(z, t, 0.0, True)  # pylint: disable=protected-access,unnecessary-lambda-assignment
  for block, warps in ((4096, 4), (4096, 8), (4096, 2), (2048, 4), (8192, 4), (8192, 8), (2048, 8)):
    def setup(block=block, warps=warps):
      xent_kernel.BLOCK_V, xent_kernel.NUM_WARPS = block, warps
    yield "triton", dict(block_v=block, warps=warps, setup=setup), kern, (logits, targets), moved


def head_cases():
  """The LM head's three cuBLAS matmuls at V = 10000 and at vocabularies padded to tile multiples
  (is the forward's 10k-wide output slow because 10000 is no multiple of 128?)."""
  h = rand(0, (B, T, D))
  for v in (10_000, 10_112, 10_240):
    w, d = rand(1, (v, D), scale=0.05), rand(2, (B, T, v), scale=1e-4)
    flops = 2 * N * D * v
    yield f"V={v} fwd", {}, lambda h, w: jnp.einsum("btd,vd->btv", h, w), (h, w), flops
    yield f"V={v} dX", {}, lambda d, w: jnp.einsum("btv,vd->btd", d, w), (d, w), flops
    yield f"V={v} dW", {}, lambda d, h: jnp.einsum("btv,btd->vd", d, h), (d, h), flops


def rope_cases():
  qkv = rand(0, (B, T, 3, H, K))
  cos, sin = model.rope_tables(T, K, 10_000.0)
  moved = 4 * N * D * 2
  ref = lambda x, c, s: (model.apply_rope(x[:, :, 0], c, s), model.apply_rope(x[:, :, 1], c, s))  # pylint: disable=unnecessary-lambda-assignment
  yield "xla", {}, ref, (qkv, cos, sin), moved
  for rows, warps in ((4, 8), (8, 4), (2, 4)):
    def setup(rows=rows, warps=warps):
      attention_kernel.ROPE_ROWS, attention_kernel.ROPE_WARPS = rows, warps
    yield "triton", dict(rows=rows, warps=warps, setup=setup), attention_kernel._rotated, (qkv, cos, sin), moved  # pylint: disable=protected-access


def attn_cases():
  """The packed-RoPE flash attention, forward and backward, at head dim 32: one row per candidate
  set, the i-th candidate of each kernel's list together (each kernel's time is its own entry in
  kernels_ms, so the three lists are swept at once). Row 0 is the table in attention_kernel.py."""
  qkv, do = rand(0, (B, T, 3, H, K)), rand(1, (B, T, H, K))
  cos, sin = (x.astype(jnp.float32) for x in model.rope_tables(T, K, 10_000.0))
  # Twenty candidates per kernel (the H100 sweep of the thirty-second session; the H200's had ten):
  # tiles, warps and pipeline stages around each kernel's row in attention_kernel.py.
  fwd = [(64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 2),
         (32, 32, 2, 3), (64, 16, 4, 3), (128, 128, 8, 3), (64, 64, 4, 2), (64, 32, 4, 4), (64, 32, 4, 1),
         (128, 32, 8, 3), (128, 64, 8, 2), (32, 32, 4, 3), (64, 32, 8, 3), (32, 16, 2, 2), (64, 64, 8, 3),
         (128, 32, 4, 2), (256, 64, 8, 2)]
  dkdv = [(32, 64, 4, 3), (64, 64, 4, 3), (32, 128, 4, 3), (64, 128, 8, 3), (16, 64, 4, 3), (32, 64, 4, 2),
          (32, 32, 4, 3), (16, 32, 2, 3), (64, 128, 4, 3), (32, 64, 8, 3), (32, 64, 4, 4), (32, 64, 4, 1),
          (32, 128, 8, 3), (16, 64, 2, 3), (32, 32, 2, 3), (64, 64, 8, 2), (16, 128, 4, 3), (64, 128, 4, 2),
          (16, 64, 4, 2), (32, 64, 2, 3)]
  dq = [(64, 32, 4, 4), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (32, 32, 2, 3),
        (64, 16, 4, 3), (128, 64, 4, 3), (64, 32, 8, 4), (32, 16, 2, 3), (64, 32, 4, 2), (64, 32, 4, 1),
        (128, 32, 8, 3), (64, 16, 4, 4), (32, 32, 4, 3), (64, 32, 2, 3), (128, 16, 8, 3), (64, 64, 8, 3),
        (128, 32, 8, 4), (32, 32, 2, 2)]
  assert (fwd[0], dkdv[0], dq[0]) == attention_kernel.block_config(T, K)
  flops = 3.5 * 4 * N * T * D / 2   # causal fwd (2 matmuls) + bwd (5), 2 flops per MAC
  for cfg in zip(fwd, dkdv, dq):
    f = lambda x, c, s, dy, cfg=cfg: jax.vjp(  # pylint: disable=unnecessary-lambda-assignment
        lambda x: attention_kernel._flash_rope(x, c, s, True, K ** -0.5, cfg), x)[1](dy)  # pylint: disable=protected-access
    yield "fwd+bwd", dict(fwd=cfg[0], dkdv=cfg[1], dq=cfg[2]), f, (qkv, cos, sin, do), flops


CASES = {"norm": norm_cases, "attn": attn_cases, "swiglu": swiglu_cases, "swiglu_fp8": swiglu_fp8_cases,
         "swiglu_fwd_fp8": swiglu_fwd_fp8_cases, "xent": xent_cases, "rope": rope_cases, "head": head_cases}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", default=",".join(CASES))
  p.add_argument("--out", default=None)
  args = p.parse_args()
  dev = jax.devices()[0]
  device = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
  out = args.out or os.path.join(ROOT, "bench", "results", f"memory_kernels_{device}.json")
  result = {**header("bench/dev_memory_kernels.py"), "rows": []}
  print(f"{dev.device_kind}; jax {jax.__version__}", flush=True)
  for name in args.only.split(","):
    best = None
    for impl, params, fn, inputs, moved in CASES[name]():
      cfg = {k: v for k, v in params.items() if k != "setup"}
      if "setup" in params:
        params["setup"]()
      try:
        ms, by = device_ms(fn, *inputs)
      except Exception as e:  # pylint: disable=broad-except  (a config that does not compile)
        print(f"{name:7s} {impl:7s} {cfg} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        continue
      if name in ("head", "attn"):   # matmuls: the last figure is FLOPs, not bytes
        row = {"kernel": name, "impl": impl, "config": cfg, "ms": ms, "TFLOP_per_s": moved / ms / 1e9,
               "kernels_ms": by}
        print(f"{name:7s} {impl:12s} {ms * 1e3:8.1f} us  {row['TFLOP_per_s']:5.0f} TFLOP/s  {cfg} "
              f"{ {k[:40]: round(v * 1e3, 1) for k, v in by.items()} }", flush=True)
      else:
        row = {"kernel": name, "impl": impl, "config": cfg, "ms": ms, "GB_moved": moved / 1e9,
               "TB_per_s": moved / ms / 1e9, "kernels_ms": by}
        print(f"{name:7s} {impl:7s} {ms * 1e3:8.1f} us  {row['TB_per_s']:5.2f} TB/s  {cfg}", flush=True)
      result["rows"].append(row)
      if impl in ("triton", "fwd+bwd") and (best is None or ms < best["ms"]):
        best = row
    if best:
      print(f"{name:7s} best triton: {best['ms'] * 1e3:.1f} us {best['config']}", flush=True)
  write_json(result, out)


if __name__ == "__main__":
  main()
