"""Dev benchmark (GPU): the packed-RoPE flash attention's three kernels (forward, dQ, dK/dV) at the
speedrun shape under several versions of attention_kernel_triton.py, interleaved in one process, so
a kernel change is timed against the tree on the same machine and clock.

  python bench/dev_attn_ab.py --variants "tree unmasked=path/to/module.py" [--rounds=3] [--out=FILE]
  python bench/dev_attn_ab.py --variants "tree small:_FWD[32]=(32,32,4,3)"

A variant is NAME=PATH (a copy of attention_kernel_triton.py with the change, loaded as a module of
its own; NAME=PATH@STATEMENTS runs the statements too), NAME:STATEMENTS (Python run in attention_kernel's namespace before the variant is timed,
e.g. `HEADS_PER_PROGRAM=(2,1,1);_FWD[32]=(32,32,4,3)`, no spaces; the settings are put back after
it) or `tree` (the product's). Each round times every variant once (device time from a
profiler trace, 20 calls; bench/dev_memory_kernels.device_ms); the summary is each kernel's median
over the rounds. Writes JSON (device, date, commit, command, rows, medians).
"""
import argparse
import copy
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
  variants, statements = {}, {}
  for spec in args.variants.split():
    if ":" in spec and ("=" not in spec or spec.index(":") < spec.index("=")):
      name, _, statement = spec.partition(":")
      variants[name], statements[name] = tree, statement
      continue
    name, _, path = spec.partition("=")
    path, _, statement = path.partition("@")   # NAME=PATH@STATEMENTS: both
    if statement:
      statements[name] = statement
    variants[name] = tree if name == "tree" else load(name, path)
  # What a statement may change, put back before each variant (HEADS_PER_PROGRAM only exists with
  # bench/results/h100_session40/two_heads_a_program.patch applied).
  settings = [k for k in ("HEADS_PER_PROGRAM", "_FWD", "_DKDV", "_DQ") if hasattr(attention_kernel, k)]
  saved = {k: copy.deepcopy(getattr(attention_kernel, k)) for k in settings}
  qkv, do = dmk.rand(0, (dmk.B, dmk.T, 3, dmk.H, dmk.K)), dmk.rand(1, (dmk.B, dmk.T, dmk.H, dmk.K))
  cos, sin = (x.astype("float32") for x in model.rope_tables(dmk.T, dmk.K, 10_000.0))
  cfg = attention_kernel.block_config(dmk.T, dmk.K)

  def f(x, c, s, dy):
    # The block table is read at trace time, so a variant's settings take effect in its own trace.
    cfg = attention_kernel.block_config(dmk.T, dmk.K)
    return jax.vjp(lambda x: attention_kernel._flash_rope(x, c, s, True, dmk.K ** -0.5, cfg), x)[1](dy)  # pylint: disable=protected-access

  result = {**dmk.header("bench/dev_attn_ab.py"), "config": cfg, "statements": statements, "rows": []}
  print(f"{result['device']}; jax {jax.__version__}; config {cfg}", flush=True)
  original = attention_kernel._triton  # pylint: disable=protected-access
  try:
    for r in range(args.rounds):
      for name, module in variants.items():
        attention_kernel._triton = lambda module=module: (jt, module)  # pylint: disable=protected-access
        for k, v in saved.items():
          setattr(attention_kernel, k, copy.deepcopy(v))
        if name in statements:
          exec(statements[name], attention_kernel.__dict__)  # pylint: disable=exec-used
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
    for k, v in saved.items():
      setattr(attention_kernel, k, v)
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
