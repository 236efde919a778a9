"""Dev benchmark (GPU): the attention kernels with a cap on registers a thread (PTX .maxnreg), so
more programs fit on an SM, at the speedrun shape (B128 T256 H16 d32, causal, packed RoPE).

  python bench/dev_maxnreg.py [--out=FILE]

Why: Nsight Compute (seventeenth session) found the backward kernels limited by registers and
occupancy. Compiled for sm_90 (tests/hopper_compile.py, cuobjdump) the dK/dV kernel uses 120
registers (4 programs of 4 warps an SM), dQ 74 (6) and the forward 71 (7). A cap trades spills
for programs in flight. jax-triton 0.3.1 has no maxnreg argument, so `install(table)` wraps its
compile to add Triton's `maxnreg` option for the kernels named in the table (the kernel cache key
does not carry it: the cache is cleared on each install, and a process uses one table at a time).

Rows: the i-th cap of each kernel's list together (each kernel's time is its own entry, so the
three lists are swept at once); device time from a profile (dev_memory_kernels.device_ms).
`install_best(json)` installs the fastest cap of each kernel from this script's output, for a
step variant: PRE_mr="import sys; sys.path.insert(0, 'bench'); import dev_maxnreg;
dev_maxnreg.install_best('FILE')" bash bench/dev_step_variants.sh with VARIANTS="base mr".
"""
import argparse
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

TABLE = {}   # kernel name -> registers a thread; read at compile time by the wrapper
CAPS = {"fwd_kernel": [None, 64, 56, 48, 48],   # ptxas refuses 40 for it (needs 46)
        "bwd_dq_rope_kernel": [None, 72, 64, 56, 48],
        "bwd_dkdv_rope_kernel": [None, 96, 80, 72, 64]}


def install(table):
  """Compile every later Triton kernel named in `table` with maxnreg = table[name]."""
  import triton_ffi  # pylint: disable=import-outside-toplevel
  triton_ffi.load()
  from jax_triton import triton_lib  # pylint: disable=import-outside-toplevel
  if not getattr(triton_lib.get_or_create_triton_kernel, "_maxnreg", False):
    orig = triton_lib.get_or_create_triton_kernel

    def wrapped(backend_init_func, platform, fn, *args, **kwargs):
      cap = TABLE.get(getattr(fn, "__name__", ""))
      if cap:
        def init(*a, init0=backend_init_func):
          backend = init0(*a)
          parse = backend.parse_options
          backend.parse_options = lambda opts: parse({**opts, "maxnreg": cap})
          return backend
        backend_init_func = init
      return orig(backend_init_func, platform, fn, *args, **kwargs)

    wrapped._maxnreg = True   # pylint: disable=protected-access
    triton_lib.get_or_create_triton_kernel = wrapped
  TABLE.clear()
  TABLE.update({k: v for k, v in table.items() if v})
  triton_lib._COMPILED_KERNEL_CACHE.clear()   # pylint: disable=protected-access


def install_best(path):
  """install() the fastest cap of each kernel in this script's JSON output (None: no cap)."""
  rows = json.load(open(path))["rows"]
  best = {k: min(rows, key=lambda r, k=k: r["kernels_ms"].get(k, 1e9))["caps"][k] for k in CAPS}
  print("maxnreg:", best, flush=True)
  install(best)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "maxnreg_attention.json"))
  args = p.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  from bench_train import _git_commit  # pylint: disable=import-outside-toplevel
  from dev_memory_kernels import B, T, H, K, device_ms, rand  # pylint: disable=import-outside-toplevel
  qkv, do = rand(0, (B, T, 3, H, K)), rand(1, (B, T, H, K))
  cos, sin = (x.astype(jnp.float32) for x in model.rope_tables(T, K, 10_000.0))
  cfg = attention_kernel.block_config(T, K)
  result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "command": " ".join(["bench/dev_maxnreg.py"] + sys.argv[1:]),
            "block_config": cfg, "rows": []}
  for i in range(len(CAPS["fwd_kernel"])):
    caps = {k: v[i] for k, v in CAPS.items()}
    install(caps)
    f = lambda x, c, s, dy: jax.vjp(  # pylint: disable=unnecessary-lambda-assignment
        lambda x: attention_kernel._flash_rope(x, c, s, True, K ** -0.5, cfg), x)[1](dy)  # pylint: disable=protected-access
    try:
      ms, by = device_ms(f, qkv, cos, sin, do)
    except Exception as e:  # pylint: disable=broad-except  (ptxas refuses a cap below what it needs)
      print(f"caps {caps} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
      continue
    result["rows"].append({"caps": caps, "ms": ms, "kernels_ms": by})
    print(f"{ms * 1e3:7.1f} us  " + "  ".join(f"{k} (cap {caps.get(k)}) {by.get(k, 0) * 1e3:.1f}"
                                              for k in sorted(by)), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:   # after every row, so a later failure keeps the earlier ones
      json.dump(result, fh, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
