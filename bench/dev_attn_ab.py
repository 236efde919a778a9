"""Dev benchmark (GPU): the packed-RoPE flash attention's three kernels (forward, dQ, dK/dV) at the
speedrun shape under several versions of attention_kernel_triton.py, interleaved in one process, so
a kernel change is timed against the tree on the same machine and clock.

  python bench/dev_attn_ab.py --variants "tree unmasked=path/to/module.py" [--rounds=3] [--out=FILE]

A variant is NAME=PATH (a copy of attention_kernel_triton.py with the change, loaded as a module of
its own) or `tree` (the product's). Each round times every variant once (device time from a
profiler trace, 20 calls; bench/dev_memory_kernels.device_ms); the summary is each kernel's median
over the rounds. Writes JSON (device, date, commit, command, rows, medians).
"""
import argparse
import importlib.util
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import jax  # pylint: disable=wrong-import-position

import attention_kernel  # pylint: disable=wrong-import-position
import dev_memory_kernels as dmk  # pylint: disable=wrong-import-position
import model  # pylint: disable=wrong-import-position


def load(name, path):
  """The kernel module at path, imported under a name of its own (Triton compiles it apart)."""
  spec = importlib.util.spec_from_file_location(f"attention_kernel_triton_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default="tree")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  jt, tree = attention_kernel._triton()  # pylint: disable=protected-access
  variants = {}
  for spec in args.variants.split():
    name, _, path = spec.partition("=")
    variants[name] = tree if name == "tree" else load(name, path)
  qkv, do = dmk.rand(0, (dmk.B, dmk.T, 3, dmk.H, dmk.K)), dmk.rand(1, (dmk.B, dmk.T, dmk.H, dmk.K))
  cos, sin = (x.astype("float32") for x in model.rope_tables(dmk.T, dmk.K, 10_000.0))
  cfg = attention_kernel.block_config(dmk.T, dmk.K)

  def f(x, c, s, dy):
    return jax.vjp(lambda x: attention_kernel._flash_rope(x, c, s, True, dmk.K ** -0.5, cfg), x)[1](dy)  # pylint: disable=protected-access

  result = {**dmk.header("bench/dev_attn_ab.py"), "config": cfg, "rows": []}
  print(f"{result['device']}; jax {jax.__version__}; config {cfg}", flush=True)
  original = attention_kernel._triton  # pylint: disable=protected-access
  try:
    for r in range(args.rounds):
      for name, module in variants.items():
        attention_kernel._triton = lambda module=module: (jt, module)  # pylint: disable=protected-access
        try:
          ms, by = dmk.device_ms(f, qkv, cos, sin, do)
        except Exception as e:  # pylint: disable=broad-except  (a variant that does not compile)
          print(f"round {r} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
          continue
        by = {k.split("(")[0][:40]: v for k, v in by.items()}
        result["rows"].append({"round": r, "variant": name, "ms": ms, "kernels_ms": by})
        print(f"round {r} {name:10s} {ms * 1e3:7.1f} us  " + "  ".join(f"{k} {v * 1e3:.1f}" for k, v in by.items()),
              flush=True)
  finally:
    attention_kernel._triton = original  # pylint: disable=protected-access
  med = {}
  for name in variants:
    rows = [row for row in result["rows"] if row["variant"] == name]
    if rows:
      med[name] = {k: statistics.median(row["kernels_ms"].get(k, float("nan")) for row in rows)
                   for k in rows[0]["kernels_ms"]}
      med[name]["total"] = statistics.median(row["ms"] for row in rows)
      print(f"median {name:10s} " + "  ".join(f"{k} {v * 1e3:.1f}" for k, v in med[name].items()), flush=True)
  result["medians_ms"] = med
  dmk.write_json(result, args.out or os.path.join(ROOT, "bench", "results", "attn_ab.json"))


if __name__ == "__main__":
  main()
