"""Dev (GPU): what JAX's persistent compilation cache saves on the speedrun step's compile.

The B128 step's jit took 39-45 s to lower and compile on the H100 in the thirty-first session
(train.py's "compiled the train step in ..."). Each run below is a fresh process, in this order:
  cold   - an empty cache directory A (and, on a fresh machine, an empty Triton kernel cache)
  warm   - A again: the executable should load from disk
  newdir - an empty directory B: XLA compiles again, Triton's own cache (~/.triton) is warm, so
           cold - newdir is roughly the Triton kernels' share
  off    - no cache directory (what train.py did before train.compilation_cache_dir)
Each prints its lowering and compile seconds and the loss after three steps (equal in all runs:
a cached executable computes what a compiled one does).

  python bench/dev_compile_cache.py --out=FILE [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def child(cache_dir, quick):
  import jax  # pylint: disable=import-outside-toplevel
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  import bench_train  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel
  config = dict(bench_train.cases(quick))["speedrun B128" if not quick else "speedrun B64"]
  config = config.copy_and_resolve_references()
  config.model.attention_backend = "triton" if jax.default_backend() == "gpu" else "xla"
  mesh = Mesh(np.array(jax.devices()), ("data",))
  state, tokens = bench_train.step_inputs(config, mesh, 1_000_000)
  t0 = time.perf_counter()
  lowered = train.make_train_step(config, mesh, on_device=True).lower(state, tokens)
  t1 = time.perf_counter()
  step = lowered.compile()
  t2 = time.perf_counter()
  for _ in range(3):
    state, metrics = step(state, tokens)
  print(json.dumps({"lower_s": t1 - t0, "compile_s": t2 - t1, "loss": float(metrics["loss"]),
                    "cache_files": len(os.listdir(cache_dir)) if cache_dir else None}))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True)
  p.add_argument("--quick", action="store_true", help="the CPU case (a check of the script)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child is not None:
    return child(args.child, args.quick)
  a, b = tempfile.mkdtemp(prefix="jaxcache_a_"), tempfile.mkdtemp(prefix="jaxcache_b_")
  runs = {}
  for label, d in (("cold", a), ("warm", a), ("newdir", b), ("off", "")):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--out", args.out, "--child", d] + (["--quick"] if args.quick else []),
                         capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    runs[label] = {**(json.loads(lines[-1]) if lines else {"error": out.stderr[-2000:]}),
                   "process_s": time.perf_counter() - t0}
    print(label, runs[label], flush=True)
  import jax  # pylint: disable=import-outside-toplevel
  with open(args.out, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv), "runs": runs}, f, indent=2)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
