"""Dev probe (GPU): can XLA give an e4m3 x e4m3 dot an e4m3 output straight from cuBLASLt (a scaled,
clipped convert fused into the GEMM's epilogue), and at what cost against the bf16 output the MLP's
x W13 writes now? The SwiGLU kernels would then read h13 at half the bytes (a question for a future
`h13` in e4m3; nothing in the product uses this).

  python bench/dev_fp8_out_gemm.py [--out=FILE]

Prints, per form, the custom calls in XLA's compiled HLO and the device time (20 calls), and
writes them as JSON.
"""
import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

import dev_memory_kernels as dmk  # pylint: disable=wrong-import-position

E4M3 = jnp.float8_e4m3fn


def dot8(a, b, out):
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=out)


def forms():
  def bf16(a, b, c):  # pylint: disable=unused-argument  (the tree's x W13)
    return dot8(a, b, jnp.bfloat16)

  def f8_f32(a, b, c):   # the pattern XLA's GEMM rewriter documents for an FP8 output
    return jnp.clip(dot8(a, b, jnp.float32) * c, -448.0, 448.0).astype(E4M3)

  def f8_bf16(a, b, c):
    return jnp.clip(dot8(a, b, jnp.bfloat16) * c.astype(jnp.bfloat16), -448.0, 448.0).astype(E4M3)

  def f8_amax(a, b, c):   # with the output's amax too (cuBLASLt can emit it: D_amax)
    d = dot8(a, b, jnp.float32)
    return jnp.clip(d * c, -448.0, 448.0).astype(E4M3), jnp.max(jnp.abs(d))

  def f8_div(a, b, c):
    return jnp.clip(dot8(a, b, jnp.float32) / c, -448.0, 448.0).astype(E4M3)

  return dict(bf16=bf16, f8_f32=f8_f32, f8_bf16=f8_bf16, f8_amax=f8_amax, f8_div=f8_div)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  n, d, e = dmk.N, dmk.D, 2 * dmk.F
  a = (jax.random.normal(jax.random.PRNGKey(0), (n, d)) * 30).astype(E4M3)
  b = (jax.random.normal(jax.random.PRNGKey(1), (e, d)) * 30).astype(E4M3)
  c = jnp.full((), 1.0 / 4096.0, jnp.float32)
  result = {**dmk.header("bench/dev_fp8_out_gemm.py"), "shape": [n, d, e], "rows": []}
  ref = None
  for name, fn in forms().items():
    row = {"form": name}
    try:
      hlo = jax.jit(fn).lower(a, b, c).compile().as_text()
      row["custom_calls"] = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
      row["calls"] = [ln.strip()[:300] for ln in hlo.splitlines() if "custom-call(" in ln or " fusion(" in ln][:8]
      ms, by = dmk.device_ms(fn, a, b, c)
      row.update(ms=ms, kernels_ms=by)
      out = jax.jit(fn)(a, b, c)
      out = out[0] if isinstance(out, tuple) else out
      if name == "f8_f32":
        ref = out.astype(jnp.float32)
      elif ref is not None and out.dtype == E4M3:
        row["codes_differing_from_f8_f32"] = float(jnp.mean((out.astype(jnp.float32) != ref).astype(jnp.float32)))
    except Exception as ex:  # pylint: disable=broad-except
      row["error"] = f"{type(ex).__name__}: {str(ex)[:400]}"
    print(json.dumps(row)[:1500], flush=True)
    result["rows"].append(row)
  dmk.write_json(result, args.out or os.path.join(ROOT, "bench", "results", "fp8_out_gemm.json"))


if __name__ == "__main__":
  main()
