"""Dev probe (not the product): would FP8 matmuls pay at the speedrun shape on this GPU?

  python bench/dev_fp8_matmul.py [--tokens=32768]

For every matmul of a training step (forward, input-gradient and weight-gradient layouts of the
LM head and of the block projections) it times XLA's bf16 dot against XLA's FP8 rewrite of the
convert -> scale -> dot pattern (cuBLASLt FP8, e4m3 operands and e5m2 for gradients), once with
operands already in FP8 and once with the bf16 -> FP8 quantization (amax, scale, cast) inside the
timed function, and reports which custom call XLA chose. A third FP8 variant passes e4m3 operands
straight to dot_general (scale 1, bf16 out), the form XLA documents as a native FP8 dot. Writes bench/results/fp8_matmul_<device>.json.
"""
import argparse
import datetime
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2


def timed(f, *args, n=30):
  out = f(*args)
  jax.block_until_ready(out)
  best = []
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(n):
      out = f(*args)
    jax.block_until_ready(out)
    best.append((time.perf_counter() - t0) / n)
  return 1e3 * min(best)


def quant(x, dtype):
  scale = jnp.max(jnp.abs(x)).astype(jnp.float32) / float(jnp.finfo(dtype).max)
  return (x.astype(jnp.float32) / scale).astype(dtype), scale


def dq_dot(a8, sa, b8, sb, dims):
  a = a8.astype(jnp.bfloat16) * sa.astype(jnp.bfloat16)
  b = b8.astype(jnp.bfloat16) * sb.astype(jnp.bfloat16)
  return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.bfloat16)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--tokens", type=int, default=32768)
  args = p.parse_args()
  N = args.tokens
  # (name, lhs shape, rhs shape, contracting dims, lhs is a gradient)
  cases = []
  for wname, din, dout in (("head", 512, 10000), ("qkv", 512, 1536), ("wo", 512, 512),
                           ("w13", 512, 2688), ("w2", 1344, 512)):
    cases.append((f"{wname} fwd  x[N,{din}] W[{din},{dout}]", (N, din), (din, dout), ((1,), (0,)), False))
    cases.append((f"{wname} dX   g[N,{dout}] W[{din},{dout}]^T", (N, dout), (din, dout), ((1,), (1,)), True))
    cases.append((f"{wname} dW   x[N,{din}]^T g[N,{dout}]", (N, din), (N, dout), ((0,), (0,)), False))
  rng = np.random.default_rng(0)
  rows = []
  dev = jax.devices()[0]
  print(f"{dev.device_kind}; jax {jax.__version__}; N={N}")
  print(f"{'matmul':44s} {'bf16':>7s} {'fp8':>7s} {'fp8+q':>7s} {'direct':>7s}  {'TF/s bf16':>9s} {'fp8':>6s}  custom call")
  for name, sa, sb, dims, a_grad in cases:
    a = jnp.asarray(rng.standard_normal(sa, np.float32), jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal(sb, np.float32), jnp.bfloat16)
    # dW's rhs is the gradient in the dW layout
    b_grad = name.split()[1] == "dW"
    da, db = (E5M2 if a_grad else E4M3), (E5M2 if b_grad else E4M3)
    bf = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.bfloat16))
    a8, s_a = quant(a, da)
    b8, s_b = quant(b, db)
    f8 = jax.jit(lambda a8, sa, b8, sb: dq_dot(a8, sa, b8, sb, dims))
    f8q = jax.jit(lambda a, b: dq_dot(*quant(a, da), *quant(b, db), dims))
    a8d, b8d = a8.astype(E4M3) if a_grad else a8, b8.astype(E4M3) if b_grad else b8
    f8d = jax.jit(lambda a8, b8: jax.lax.dot_general(a8, b8, (dims, ((), ())), preferred_element_type=jnp.bfloat16))
    flops = 2 * np.prod(sa) * (sb[1] if dims[1] == (0,) else sb[0])
    t_bf, t_8, t_8q, t_8d = timed(bf, a, b), timed(f8, a8, s_a, b8, s_b), timed(f8q, a, b), timed(f8d, a8d, b8d)

    def fp8_call(hlo):  # is an FP8 operand fed to a library call?
      return bool(re.search(r"f8e[45]m[23]", " ".join(l for l in hlo.splitlines() if "custom_call" in l)))
    hlo = f8.lower(a8, s_a, b8, s_b).compile().as_text()
    calls = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
    f8_used = fp8_call(hlo)
    f8d_used = fp8_call(f8d.lower(a8d, b8d).compile().as_text())
    ref = np.asarray(bf(a, b), np.float32)
    err = float(np.abs(np.asarray(f8(a8, s_a, b8, s_b), np.float32) - ref).mean() / np.abs(ref).mean())
    print(f"{name:44s} {t_bf:7.3f} {t_8:7.3f} {t_8q:7.3f} {t_8d:7.3f}  {flops / t_bf / 1e9:9.0f} {flops / t_8 / 1e9:6.0f}"
          f"  {','.join(calls)} f8={f8_used} direct_f8={f8d_used} relerr={err:.3f}", flush=True)
    rows.append({"matmul": name, "ms_bf16": t_bf, "ms_fp8": t_8, "ms_fp8_with_quant": t_8q, "ms_fp8_direct_e4m3": t_8d,
                 "fp8_direct_in_custom_call": f8d_used,
                 "gflop": flops / 1e9, "custom_calls": calls, "fp8_in_custom_call": f8_used,
                 "mean_rel_err_vs_bf16": err})
  for kind in ("ms_bf16", "ms_fp8", "ms_fp8_with_quant", "ms_fp8_direct_e4m3"):
    print(f"sum {kind}: {sum(r[kind] for r in rows):.3f} ms "
          f"(head only {sum(r[kind] for r in rows if r['matmul'].startswith('head')):.3f})")
  device = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
  out = os.path.join(ROOT, "bench", "results", f"fp8_matmul_{device}.json")
  with open(out, "w") as f:
    json.dump({"device": dev.device_kind, "jax": jax.__version__, "tokens": N,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(["python"] + sys.argv), "rows": rows}, f, indent=2)
  print("wrote", out)


if __name__ == "__main__":
  main()
