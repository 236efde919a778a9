"""Dev probe (GPU, not the product): would an FP8 SwiGLU MLP pay in the speedrun step?

  python bench/dev_fp8_mlp.py [--out=FILE]

The MLP sublayer's forward and backward at the speedrun shape (32768 tokens, D512, F1344), three
ways, device time from a profiler trace (bench/dev_memory_kernels.py's device_ms):
  bf16       model.swiglu (the config's path: cuBLAS bf16, the Triton SwiGLU backward)
  fp8        the forward and input-gradient matmuls in e4m3 with a scale per row for activations
             and gradients and one per tensor for weights, quantized by XLA fusions; the weight
             gradients stay bf16 (FP8 in that layout ran 6x slower, docs/model.md)
  fp8 dots   the four FP8 matmuls alone on operands already in FP8: what fp8 could reach if the
             quantization rode in kernels that already read those tensors
It also reports each variant's error against a float32 MLP (the output and the three gradients).
"""
import argparse
import datetime
import functools
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

import model  # pylint: disable=wrong-import-position
from bench_train import _git_commit  # pylint: disable=wrong-import-position
from dev_memory_kernels import device_ms, rand  # pylint: disable=wrong-import-position

N, D, F = 128 * 256, 512, 1344
E4M3 = jnp.float8_e4m3fn
F8MAX = float(jnp.finfo(E4M3).max)
f32, bf16 = jnp.float32, jnp.bfloat16


def q_rows(x):
  """x [N, K] -> (e4m3 x * s, 1/s [N, 1]) with s = 448 / max|row|."""
  x = x.astype(f32)
  s = F8MAX / jnp.maximum(jnp.max(jnp.abs(x), -1, keepdims=True), 1e-30)
  return jnp.clip(x * s, -F8MAX, F8MAX).astype(E4M3), 1.0 / s


def q_tensor(w):
  w = w.astype(f32)
  s = F8MAX / jnp.maximum(jnp.max(jnp.abs(w)), 1e-30)
  return jnp.clip(w * s, -F8MAX, F8MAX).astype(E4M3), 1.0 / s


def dot8(a8, b8, contract_b):
  """a8 [M, K] . b8 (K on axis contract_b), bf16 out, fp32 accumulation in cuBLASLt."""
  return jax.lax.dot_general(a8, b8, (((1,), (contract_b,)), ((), ())), preferred_element_type=bf16)


def silu_mul(h13):
  return jax.nn.silu(h13[:, :F]) * h13[:, F:]


@jax.custom_vjp
def mlp_fp8(x, w13, w2):
  return _fwd(x, w13, w2)[0]


def _fwd(x, w13, w2):
  x8, sx = q_rows(x)
  w13_8, s13 = q_tensor(w13)
  h13 = (dot8(x8, w13_8, 0).astype(f32) * (sx * s13)).astype(bf16)
  act = silu_mul(h13)
  a8, sa = q_rows(act)
  w2_8, s2 = q_tensor(w2)
  y = (dot8(a8, w2_8, 0).astype(f32) * (sa * s2)).astype(bf16)
  return y, (x, h13, act, w13_8, s13, w2_8, s2)


def _bwd(res, dy):
  x, h13, act, w13_8, s13, w2_8, s2 = res
  dy8, sdy = q_rows(dy)
  dact = (dot8(dy8, w2_8, 1).astype(f32) * (sdy * s2)).astype(bf16)
  dw2 = jnp.dot(act.T, dy, preferred_element_type=f32)
  _, vjp = jax.vjp(silu_mul, h13)
  dh13, = vjp(dact)
  dh8, sdh = q_rows(dh13)
  dx = (dot8(dh8, w13_8, 1).astype(f32) * (sdh * s13)).astype(bf16)
  dw13 = jnp.dot(x.T, dh13, preferred_element_type=f32)
  return dx, dw13, dw2


mlp_fp8.defvjp(_fwd, _bwd)


def mlp_bf16(x, w13, w2, backend="triton"):
  p = {"w13": w13.reshape(D, 2, F), "w2": w2}
  return model.swiglu(p, x[None], bf16, backend)[0]


def mlp_f32(x, w13, w2):
  h13 = jnp.dot(x.astype(f32), w13, precision="highest")
  return jnp.dot(silu_mul(h13), w2, precision="highest")


def grads(f):
  return lambda x, w13, w2, dy: jax.vjp(f, x, w13, w2)[1](dy)


def fwd_bwd(f):
  def run(x, w13, w2, dy):
    y, vjp = jax.vjp(f, x, w13, w2)
    return (y, *vjp(dy))
  return run


def dots_only(x8, w13_8, a8, w2_8, dy8, dh8):
  return dot8(x8, w13_8, 0), dot8(a8, w2_8, 0), dot8(dy8, w2_8, 1), dot8(dh8, w13_8, 1)


def dots_bf16(x, w13, a, w2, dy, dh):
  return x @ w13, a @ w2, dy @ w2.T, dh @ w13.T


def rel_err(a, ref):
  a, ref = a.astype(f32), ref.astype(f32)
  return float(jnp.linalg.norm(a - ref) / jnp.linalg.norm(ref))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  dev = jax.devices()[0]
  device = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
  out = args.out or os.path.join(ROOT, "bench", "results", f"fp8_mlp_{device}.json")
  # RMSNorm's output has rms ~1 per row; weights at the model's init scale; a gradient of the
  # residual stream at a loss-like scale (1/N per token).
  x = rand(0, (N, D))
  w13 = rand(1, (D, 2 * F), f32, D ** -0.5)
  w2 = rand(2, (F, D), f32, F ** -0.5)
  dy = rand(3, (N, D), bf16, 1.0 / N)
  result = {"device": dev.device_kind, "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "command": " ".join(["bench/dev_fp8_mlp.py"] + sys.argv[1:]), "rows": []}
  print(f"{dev.device_kind}; jax {jax.__version__}", flush=True)
  ref = jax.jit(fwd_bwd(mlp_f32))(x, w13, w2, dy.astype(f32))
  for name, f in (("bf16", functools.partial(mlp_bf16, backend="triton")),
                  ("bf16 xla swiglu", functools.partial(mlp_bf16, backend="xla")), ("fp8", mlp_fp8)):
    got = jax.jit(fwd_bwd(f))(x, w13, w2, dy)
    errs = {k: rel_err(g, r) for k, g, r in zip(("y", "dx", "dw13", "dw2"), got, ref)}
    ms, by = device_ms(fwd_bwd(f), x, w13, w2, dy)
    top = dict(sorted(((k[:48], round(v * 1e3, 1)) for k, v in by.items()), key=lambda kv: -kv[1]))
    result["rows"].append({"variant": name, "ms": ms, "rel_err_vs_f32": errs, "kernels_us": top})
    print(f"{name:16s} {ms * 1e3:7.1f} us  rel err {', '.join(f'{k} {v:.4f}' for k, v in errs.items())}", flush=True)
    print(f"   kernels (us): {top}", flush=True)
  a = silu_mul(jnp.dot(x, w13.astype(bf16)))
  dh = rand(4, (N, 2 * F), bf16, 1e-4)
  ops8 = (q_rows(x)[0], q_tensor(w13)[0], q_rows(a)[0], q_tensor(w2)[0], q_rows(dy)[0], q_rows(dh)[0])
  for name, f, ins in (("dots bf16", dots_bf16, (x, w13.astype(bf16), a, w2.astype(bf16), dy, dh)),
                       ("dots fp8", dots_only, ops8)):
    ms, by = device_ms(f, *ins)
    top = dict(sorted(((k[:48], round(v * 1e3, 1)) for k, v in by.items()), key=lambda kv: -kv[1]))
    result["rows"].append({"variant": name, "ms": ms, "kernels_us": top})
    print(f"{name:16s} {ms * 1e3:7.1f} us  {top}", flush=True)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
