"""Dev tool (CPU): where the Triton kernels' instructions go, from their sm_90 SASS.

Traces the speedrun step (or only the packed-RoPE attention at the speedrun shape) through
tests/hopper_compile.py, so every kernel it launches is compiled for the H100 here, disassembles
each cubin with the cuobjdump inside the triton wheel, and splits the code into its loops (a
branch back to an earlier address closes one) and the straight code around them. For each loop:
its length and its opcode mix, the instructions each thread issues per trip. What the loops do
not hold is the per-program cost (prologue, pipeline fill and drain, epilogue) that a program pays
however few trips it makes; at T = 256 the attention's programs make 2-8 trips.

  python bench/dev_sass_mix.py [--what=attention|step] [--kernel=SUBSTRING] [--out=FILE]

No GPU: the numbers are static instruction counts, not timings.
"""
import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def cuobjdump(cubin, flag):
  """cuobjdump's text for a cubin (bytes) with one flag (-sass, -res-usage): Triton's bundled copy,
  so no CUDA install or GPU is needed."""
  import triton  # pylint: disable=import-outside-toplevel
  tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
  with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(cubin)
    f.flush()
    return subprocess.run([tool, flag, f.name], check=True, capture_output=True, text=True).stdout


def sass(cubin):
  """[(address, opcode, operands)] of a cubin's one kernel."""
  return [(int(m.group(1), 16), m.group(3), m.group(4)) for m in INSTR.finditer(cuobjdump(cubin, "-sass"))]


def loops(code):
  """(start, end) address ranges closed by a backward branch, innermost-last order irrelevant."""
  out = []
  for addr, op, args in code:
    target = re.search(r"0x([0-9a-f]+)", args)
    if op.startswith("BRA") and target and int(target.group(1), 16) < addr:
      out.append((int(target.group(1), 16), addr))
  return out


def mix(code, lo, hi):
  return collections.Counter(op.split(".")[0] for addr, op, _ in code if lo <= addr <= hi)


def analyse(name, cubin):
  code = sass(cubin)
  code = [c for c in code if not (c[1] == "BRA" and c[0] == code[-1][0])]   # the trailing self-branch
  found = loops(code)
  inside = set()
  rows = []
  for lo, hi in found:
    m = mix(code, lo, hi)
    inside |= {a for a, _, _ in code if lo <= a <= hi}
    rows.append({"start": hex(lo), "end": hex(hi), "instructions": sum(m.values()), "mix": dict(m.most_common())})
  return {"kernel": name, "instructions": len(code), "outside_loops": len(code) - len(inside), "loops": rows}


def compiled_kernels(what):
  """[(kernel name, cubin)] of every distinct compile the traced computation asks for."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  import hopper_compile  # pylint: disable=import-outside-toplevel
  monkeypatch = pytest.MonkeyPatch()
  compiler = hopper_compile.patch(monkeypatch)
  if what == "attention":
    import attention_kernel  # pylint: disable=import-outside-toplevel
    import model  # pylint: disable=import-outside-toplevel
    b, t, h, d = 128, 256, 16, 32
    qkv = jax.ShapeDtypeStruct((b, t, 3, h, d), jnp.bfloat16)
    cos, sin = model.rope_tables(t, d, 10_000.0)
    f = lambda x: attention_kernel.flash_attention_rope(x, cos, sin).astype(jnp.float32).sum()
    jax.eval_shape(jax.grad(f), qkv)
  else:
    import train  # pylint: disable=import-outside-toplevel
    from configs import tinystories_h100  # pylint: disable=import-outside-toplevel
    config = tinystories_h100.get_config()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    state = jax.eval_shape(lambda k: train._init_state(config, k), jax.random.key(0))  # pylint: disable=protected-access
    jax.eval_shape(train.make_train_step(config, mesh, on_device=True), state,
                   jax.ShapeDtypeStruct((1_000_000,), np.uint16))
  monkeypatch.undo()
  return [(key[0].__name__, k.asm["cubin"]) for key, k in compiler._cache.items()]  # pylint: disable=protected-access


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--what", choices=("attention", "step"), default="attention")
  p.add_argument("--kernel", default="", help="only kernels whose name contains this")
  p.add_argument("--out", default="")
  args = p.parse_args()
  results = [analyse(n, c) for n, c in compiled_kernels(args.what) if args.kernel in n]
  for r in results:
    print(f"{r['kernel']}: {r['instructions']} instructions, {r['outside_loops']} outside loops")
    for loop in r["loops"]:
      top = ", ".join(f"{k} {v}" for k, v in list(loop["mix"].items())[:10])
      print(f"  loop {loop['start']}-{loop['end']}: {loop['instructions']} a trip ({top})")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"date": datetime.date.today().isoformat(), "target": "sm_90 (compiled locally, triton "
                 + __import__("triton").__version__ + ")", "command": "python " + " ".join(sys.argv),
                 "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
