"""Dev (GPU): where a timed step's time goes beyond its kernels, for the B128 speedrun step.

bench_train.py's timed step (median of 10-step loops) has been 0.5-0.8 ms longer than the kernels'
first-to-last span in its profile. This script separates the candidates: the host's dispatch
cost per step (if it exceeded the GPU's time the GPU would wait on the host), the fixed cost of a
loop (first launch, final sync) that a 10-step loop spreads over few steps, and the sustained
clock over a long loop (nvidia-smi's SM clock and power during it).

  python bench/dev_dispatch.py --out=/tmp/dispatch.json [--set=model.attn_fp8=True ...]

Prints and writes: per loop length N, the median wall ms per step over --repeats loops; the
median host ms per dispatch call; the clock while the longest loop ran.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from jax.sharding import Mesh  # pylint: disable=wrong-import-position

import bench_train  # pylint: disable=wrong-import-position


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--case", default="speedrun B128", help="a bench_train.py case name")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
  p.add_argument("--lengths", default="1,10,50,200", help="loop lengths N to time")
  p.add_argument("--repeats", type=int, default=3, help="loops per length, median taken")
  p.add_argument("--quick", action="store_true", help="tiny shapes (a CPU check of the script)")
  p.add_argument("--out", required=True, help="JSON path")
  args = p.parse_args()
  config = dict(bench_train.cases(args.quick))[args.case]
  bench_train.apply_overrides(config, args.set)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  backend = "triton" if jax.default_backend() == "gpu" else "xla"
  config, step, state, tokens_N, compile_s = bench_train.compiled_step(
      config, backend, mesh, 100_000 if args.quick else 10_000_000)
  for _ in range(10):
    state, metrics = step(state, tokens_N)
  jax.block_until_ready(metrics)

  # Host cost of each call, while the GPU works through the queue behind it.
  calls = []
  for _ in range(50):
    t0 = time.perf_counter()
    state, metrics = step(state, tokens_N)
    calls.append(time.perf_counter() - t0)
  jax.block_until_ready(metrics)

  loops, power = {}, None
  for n in [int(x) for x in args.lengths.split(",")]:
    times = []
    for r in range(args.repeats):
      sampler = bench_train._PowerSampler() if r == 0 and n == max(map(int, args.lengths.split(","))) else None  # pylint: disable=protected-access
      t0 = time.perf_counter()
      for _ in range(n):
        state, metrics = step(state, tokens_N)
      jax.block_until_ready(metrics)
      times.append(1e3 * (time.perf_counter() - t0) / n)
      if sampler:
        power = sampler.stop()
    loops[n] = {"ms_per_step_median": float(np.median(times)), "ms_per_step": times}
    print(f"N={n:4d}: {np.median(times):7.3f} ms/step (runs {', '.join(f'{t:.3f}' for t in times)})", flush=True)
  dispatch_ms = 1e3 * float(np.median(calls))
  print(f"host dispatch: {dispatch_ms:.3f} ms per call (median of 50; max {1e3 * max(calls):.3f}); clock {power}")
  result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "case": args.case, "overrides": args.set,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": bench_train._git_commit(),  # pylint: disable=protected-access
            "command": " ".join(["bench/dev_dispatch.py"] + sys.argv[1:]), "compile_s": compile_s,
            "dispatch_ms_median": dispatch_ms, "dispatch_ms": [1e3 * c for c in calls], "loops": loops,
            "gpu_power_longest_loop": power}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
