"""Sweeps block sizes / warps / stages of each Triton attention kernel on the GPU (dev tool).

  python bench/tune_attention.py [--out bench/results/attention_tune_h100.json]

Launches the kernels of attention_kernel_triton.py directly on torch CUDA tensors (the same
kernels and constexprs jax-triton compiles) and times each with triton.testing.do_bench (median),
at the benchmark shapes, causal, bf16. Compilation runs first in a process pool (it fills
Triton's on-disk cache), so the timing loop only loads binaries. The winners go into the table
at the top of attention_kernel.py by hand, with the reasoning in docs/attention.md.
"""
import argparse
import concurrent.futures as cf
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [(128, 16, 256, 32), (16, 12, 1024, 64), (4, 16, 4096, 64), (2, 16, 8192, 128)]
# (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates per head dim; see attention_kernel.py for
# what M and N mean in each kernel. Small head dims get small tiles and fewer warps.
FWD = {
    32: [(32, 16, 2, 3), (32, 32, 2, 3), (32, 32, 4, 3), (64, 16, 4, 3), (64, 32, 2, 3),
         (64, 32, 4, 3), (64, 32, 4, 4), (64, 64, 4, 3), (128, 32, 4, 3)],
    64: [(64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 4, 4), (128, 128, 4, 3), (128, 32, 4, 3),
         (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 2)],
    128: [(64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 4, 2), (128, 32, 4, 3), (128, 64, 4, 3),
          (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3), (128, 128, 8, 2)],
}
DKDV = {
    32: [(16, 32, 2, 3), (16, 32, 4, 3), (32, 32, 4, 3), (16, 64, 4, 3), (32, 64, 2, 3),
         (32, 64, 4, 3), (32, 64, 4, 4), (32, 128, 4, 3)],
    64: [(16, 64, 4, 3), (32, 64, 4, 3), (32, 64, 4, 4), (32, 64, 8, 3), (64, 64, 4, 3),
         (32, 128, 4, 3), (32, 128, 8, 3), (64, 128, 8, 3), (16, 128, 4, 3)],
    128: [(16, 64, 4, 3), (32, 64, 4, 3), (32, 64, 8, 3), (32, 64, 4, 2), (64, 64, 4, 3),
          (64, 64, 8, 3), (32, 128, 8, 3), (64, 128, 8, 3), (64, 128, 8, 2), (16, 128, 8, 3)],
}
DQ = {
    32: [(32, 16, 2, 3), (32, 32, 2, 3), (32, 32, 4, 3), (64, 16, 4, 3), (64, 32, 2, 3),
         (64, 32, 4, 3), (64, 32, 4, 4), (128, 32, 4, 3)],
    64: [(64, 32, 4, 3), (64, 32, 4, 4), (64, 64, 4, 3), (128, 32, 4, 3), (128, 32, 8, 3),
         (128, 64, 8, 3), (128, 64, 4, 3), (64, 16, 4, 3)],
    128: [(64, 32, 4, 3), (64, 32, 4, 4), (64, 64, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3),
          (128, 64, 8, 3), (128, 32, 4, 3), (128, 64, 8, 2), (128, 128, 8, 2)],
}


def _tensors(b, h, t, d):
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator(device="cuda").manual_seed(0)
  q, k, v, do = (torch.randn((b, t, h, d), device="cuda", dtype=torch.bfloat16, generator=g)
                 for _ in range(4))
  lse = torch.randn((b, h, t), device="cuda") + 5.0
  delta = torch.randn((b, h, t), device="cuda")
  return q, k, v, do, lse, delta


def _launcher(kind, shape, cfg, ts):
  """A no-argument function that launches one kernel once (the thing do_bench times)."""
  import torch  # pylint: disable=import-outside-toplevel
  import attention_kernel_triton as K  # pylint: disable=import-outside-toplevel
  b, h, t, d = shape
  bm, bn, nw, ns = cfg
  q, k, v, do, lse, delta = ts
  c = dict(SM_SCALE=d ** -0.5, T=t, H=h, D=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=True,
           num_warps=nw, num_stages=ns)
  if kind == "fwd":
    o, lse_out = torch.empty_like(q), torch.empty_like(lse)
    return lambda: K.fwd_kernel[(-(-t // bm), b * h)](q, k, v, o, lse_out, **c)
  if kind == "dkdv":
    dk, dv = torch.empty_like(q), torch.empty_like(q)
    return lambda: K.bwd_dkdv_kernel[(-(-t // bn), b * h)](q, k, v, do, lse, delta, dk, dv, **c)
  dq, o, delta_out = torch.empty_like(q), torch.randn_like(q), torch.empty_like(delta)
  return lambda: K.bwd_dq_kernel[(-(-t // bm), b * h)](q, k, v, o, do, lse, delta_out, dq, **c)


def _valid(kind, cfg):
  bm, bn = cfg[:2]
  return bn % bm == 0 if kind == "dkdv" else bm % bn == 0


def _compile(job):
  """Worker: compile (and run once) one (kind, shape, cfg); errors are results, not crashes."""
  kind, shape, cfg = job
  one = (1, *shape[1:])  # B = 1: the binary depends on T, H, D and the config, not on B
  try:
    _launcher(kind, one, cfg, _tensors(*one))()
    return None
  except Exception as e:  # pylint: disable=broad-except  (out of shared memory, say)
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="bench/results/attention_tune_h100.json")
  ap.add_argument("--workers", type=int, default=12)
  args = ap.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  import triton  # pylint: disable=import-outside-toplevel
  jobs = [(kind, s, c) for s in SHAPES for kind, cs in (("fwd", FWD), ("dkdv", DKDV), ("dq", DQ))
          for c in cs[s[3]] if _valid(kind, c)]
  with cf.ProcessPoolExecutor(args.workers, mp_context=__import__("multiprocessing")
                              .get_context("spawn")) as pool:
    errors = dict(zip(jobs, pool.map(_compile, jobs)))
  results = []
  for shape in SHAPES:
    ts = _tensors(*shape)
    b, h, t, d = shape
    fwd_flop = 2 * 2 * b * h * t * t * d / 2
    for kind in ("fwd", "dkdv", "dq"):
      best = None
      for kind_, s, cfg in jobs:
        if kind_ != kind or s != shape:
          continue
        err = errors[(kind, s, cfg)]
        ms = None
        if err is None:
          try:
            ms = triton.testing.do_bench(_launcher(kind, shape, cfg, ts), warmup=5, rep=20,
                                         return_mode="median")
          except Exception as e:  # pylint: disable=broad-except
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        # dkdv does 4 of the 7 backward matmuls, dq 3 (both recompute P); bwd FLOP = 2.5 x fwd.
        flop = fwd_flop * {"fwd": 1.0, "dkdv": 2.0, "dq": 1.5}[kind]
        tf = flop / ms / 1e9 if ms else None
        results.append(dict(kind=kind, shape=shape, config=cfg, ms=ms, tflops=tf, error=err))
        print(f"{kind:5s} B={b:3d} H={h:2d} T={t:5d} d={d:3d} cfg={cfg} "
              + (f"{ms:.4f} ms {tf:6.1f} TFLOP/s" if ms else f"failed: {err}"), flush=True)
        if ms and (best is None or ms < best[1]):
          best = (cfg, ms)
      print(f"BEST {kind} {shape}: {best}", flush=True)
    del ts
    torch.cuda.empty_cache()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(device=torch.cuda.get_device_name(), date=datetime.datetime.now(
        datetime.timezone.utc).isoformat(), triton=triton.__version__,
                   command=" ".join(sys.argv), results=results), f, indent=1)


if __name__ == "__main__":
  main()
