"""Forward attention speed: the hand-written CUDA kernel vs cuDNN vs plain XLA (causal, bf16).

  python bench/bench_attention_cuda.py [--out bench/results/attention_cuda_h100.json]

FLOPs counted as the causal half of the dense count: 4·B·H·T²·K / 2 (two matmuls of 2·T²·K each,
half the scores masked). Time = median over 5 repeats of (one repeat's time / n) for n calls
dispatched back to back, n chosen so that a repeat lasts >= 50 ms (host dispatch stays hidden).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attention_cuda  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import time_fn  # noqa: E402  (one timing method for every attention bench)

# (B, H, T, K)
SHAPES = [(128, 16, 256, 32), (16, 12, 1024, 64), (4, 16, 4096, 64), (2, 16, 8192, 128)]
PEAK_SPEC = 989e12      # H100 SXM dense bf16 tensor-core peak (datasheet)
PEAK_MEASURED = 796e12  # best bf16 matmul measured on this machine


def backends():
  def dpa(impl):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
  return {
      "cuda": lambda q, k, v: attention_cuda.cuda_attention(q, k, v, causal=True),
      "cudnn": dpa("cudnn"),
      "xla": dpa("xla"),
  }


def git_commit():
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="bench/results/attention_cuda_h100.json")
  args = parser.parse_args()

  rows = []
  fns = {name: jax.jit(f) for name, f in backends().items()}
  print(f"{'B,H,T,K':>18} {'backend':>7} {'ms':>8} {'TFLOP/s':>8} {'%spec':>6} {'%meas':>6} {'max|Δ| vs xla':>14}")
  for B, H, T, K in SHAPES:
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (B, T, H, K), jnp.bfloat16) for key in keys)
    flops = 4 * B * H * T * T * K / 2
    o_xla = fns["xla"](q, k, v).astype(jnp.float32)
    for name, f in fns.items():
      row = dict(B=B, H=H, T=T, K=K, backend=name)
      try:
        sec = time_fn(f, (q, k, v), reps=5)
        diff = float(jnp.max(jnp.abs(f(q, k, v).astype(jnp.float32) - o_xla)))
        row.update(ms=sec * 1e3, tflops=flops / sec / 1e12, frac_peak_spec=flops / sec / PEAK_SPEC,
                   frac_peak_measured=flops / sec / PEAK_MEASURED, max_abs_diff_vs_xla=diff)
        print(f"{f'{B},{H},{T},{K}':>18} {name:>7} {row['ms']:8.3f} {row['tflops']:8.1f} "
              f"{100 * row['frac_peak_spec']:6.1f} {100 * row['frac_peak_measured']:6.1f} {diff:14.2e}",
              flush=True)
      except Exception as e:  # e.g. a backend that does not support a shape: record, go on
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"{f'{B},{H},{T},{K}':>18} {name:>7} failed: {row['error']}", flush=True)
      rows.append(row)

  result = dict(
      name="attention_cuda", device=jax.devices()[0].device_kind, jax=jax.__version__,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      git_commit=git_commit(), command=" ".join(["python"] + sys.argv),
      flops="4*B*H*T^2*K/2 (causal)", dtype="bfloat16", causal=True,
      peak_bf16_spec=PEAK_SPEC, peak_bf16_measured=PEAK_MEASURED, results=rows)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
