"""Causal bf16 attention, forward and forward+backward: Triton (ours) vs cuDNN vs plain XLA.

  python bench/bench_attention.py [--out bench/results/attention_h100.json] [--reps 5]

Every implementation takes and returns the model's [B, T, H, K] layout and runs inside jax.jit:
  triton  attention_kernel.flash_attention (jax-triton)
  cudnn   jax.nn.dot_product_attention(..., implementation='cudnn')
  xla     model.attention(..., 'xla') if model.py imports, else the same einsum written here
  cuda    attention_cuda.cuda_attention, forward only, when `import attention_cuda` works
Timing: after a warm-up (compile + 3 calls), `n` calls are dispatched back to back and the clock
stops at block_until_ready of the last; time = total / n, median of --reps repeats, with n chosen
so one repeat lasts >= 50 ms (the GPU queue stays full, so host dispatch is hidden).
FLOPs (causal): fwd = 2*2*B*H*T^2*d / 2; fwd+bwd = 3.5 x fwd (bwd = 2.5 x fwd, the standard count;
our backward actually does 7 matmuls of the 5 counted because it recomputes P in both kernels).
"""
import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

import attention_kernel

SHAPES = [(128, 16, 256, 32), (16, 12, 1024, 64), (4, 16, 4096, 64), (2, 16, 8192, 128)]
PEAK_TFLOPS = 989.0  # H100 SXM dense bf16
PEAK_TBS = 3.35      # H100 SXM HBM3


def _xla(q, k, v):
  try:
    import model  # pylint: disable=import-outside-toplevel
    return model.attention(q, k, v, "xla", causal=True)
  except ImportError:
    s = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    t = q.shape[1]
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    return jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(s, -1).astype(v.dtype), v)


def implementations():
  impls = {
      "triton": lambda q, k, v: attention_kernel.flash_attention(q, k, v, causal=True),
      "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                            implementation="cudnn"),
      "xla": _xla,
  }
  try:
    import attention_cuda  # pylint: disable=import-outside-toplevel
    impls["cuda"] = lambda q, k, v: attention_cuda.cuda_attention(q, k, v, causal=True)
  except ImportError as e:
    print(f"attention_cuda not benchmarked: {e}")
  return impls


def time_fn(fn, args, reps):
  """Median seconds per call of a jitted fn (see the module docstring for the method)."""
  out = fn(*args)
  jax.block_until_ready(out)
  for _ in range(3):
    out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  n = max(3, min(2000, int(0.05 / max(time.perf_counter() - t0, 1e-6))))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / n)
  return statistics.median(times)


def floors(b, h, t, d):
  """Lower bounds in ms: compute (FLOPs / bf16 peak) and memory (bytes that must move / HBM)."""
  fwd_flop = 2 * 2 * b * h * t * t * d / 2
  x = b * t * h * d * 2  # one bf16 [B, T, H, K] array in bytes
  # fwd reads q, k, v and writes o; bwd reads q, k, v, o, dO and writes dq, dk, dv.
  return dict(fwd_compute_ms=fwd_flop / PEAK_TFLOPS / 1e9, fwd_memory_ms=4 * x / PEAK_TBS / 1e9,
              fwdbwd_compute_ms=3.5 * fwd_flop / PEAK_TFLOPS / 1e9,
              fwdbwd_memory_ms=12 * x / PEAK_TBS / 1e9)


def write_json(out, rows, shapes):
  git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True,  # pylint: disable=unnecessary-lambda-assignment
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  commit = git("rev-parse", "--verify", "-q", "HEAD")
  if commit and git("status", "--porcelain", "--untracked-files=no"):
    commit += "+dirty"
  try:
    import triton  # pylint: disable=import-outside-toplevel
    import jax_triton  # pylint: disable=import-outside-toplevel
    versions = dict(jax=jax.__version__, triton=triton.__version__,
                    jax_triton=getattr(jax_triton, "__version__", "?"))
  except ImportError:
    versions = dict(jax=jax.__version__)
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(dict(device=jax.devices()[0].device_kind,
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   git_commit=commit or "uncommitted", command="python " + " ".join(sys.argv),
                   versions=versions, block_config={f"T={t},d={d}": attention_kernel.block_config(t, d)
                                                    for _, _, t, d in shapes},
                   method=__doc__, results=rows), f, indent=1)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="bench/results/attention_h100.json")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--impls", default="triton,cudnn,xla,cuda", help="comma-separated subset")
  ap.add_argument("--shapes", default=None, help="B,H,T,d;B,H,T,d (default: the four above)")
  args = ap.parse_args()
  impls = {n: f for n, f in implementations().items() if n in args.impls.split(",")}
  shapes = ([tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
            if args.shapes else SHAPES)
  rows = []
  key = jax.random.PRNGKey(0)
  for b, h, t, d in shapes:
    q, k, v, do = (jax.random.normal(kk, (b, t, h, d), jnp.bfloat16)
                   for kk in jax.random.split(jax.random.fold_in(key, t), 4))
    fwd_flop = 2 * 2 * b * h * t * t * d / 2
    row = dict(B=b, H=h, T=t, d=d, **floors(b, h, t, d))
    for name, f in impls.items():
      fwd = jax.jit(f)

      def fwdbwd(q, k, v, do, f=f):
        o, vjp = jax.vjp(f, q, k, v)
        return o, vjp(do)

      for mode, fn, a, flop in (("fwd", fwd, (q, k, v), fwd_flop),
                                ("fwdbwd", jax.jit(fwdbwd), (q, k, v, do), 3.5 * fwd_flop)):
        if name == "cuda" and mode == "fwdbwd":
          continue
        try:
          sec = time_fn(fn, a, args.reps)
          row[f"{name}_{mode}_ms"] = sec * 1e3
          row[f"{name}_{mode}_tflops"] = flop / sec / 1e12
        except Exception as e:  # pylint: disable=broad-except  (XLA out of memory at long T, say)
          row[f"{name}_{mode}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        print(f"B={b:3d} H={h:2d} T={t:5d} d={d:3d} {name:6s} {mode:6s} "
              + (f"{row[f'{name}_{mode}_ms']:8.3f} ms {row[f'{name}_{mode}_tflops']:6.1f} TFLOP/s"
                 if f"{name}_{mode}_ms" in row else row[f"{name}_{mode}_error"]), flush=True)
    rows.append(row)
    del q, k, v, do
    write_json(args.out, rows, shapes)  # after every shape, so a cut-off run still leaves data

  print("\n| B | H | T | d | mode | floor ms (compute / memory) | "
        + " | ".join(f"{n} ms (TFLOP/s)" for n in impls) + " | triton / cudnn |")
  print("|" + "---|" * (7 + len(impls)))
  for r in rows:
    for mode in ("fwd", "fwdbwd"):
      cells = []
      for n in impls:
        ms = r.get(f"{n}_{mode}_ms")
        cells.append(f"{ms:.3f} ({r[f'{n}_{mode}_tflops']:.0f})" if ms else "-")
      ratio = (r[f"cudnn_{mode}_ms"] / r[f"triton_{mode}_ms"]
               if r.get(f"cudnn_{mode}_ms") and r.get(f"triton_{mode}_ms") else float("nan"))
      print(f"| {r['B']} | {r['H']} | {r['T']} | {r['d']} | {mode} | "
            f"{r[f'{mode}_compute_ms']:.3f} / {r[f'{mode}_memory_ms']:.3f} | "
            + " | ".join(cells) + f" | {ratio:.2f}x |")

  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
