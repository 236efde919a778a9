"""Dev tool: lists every cuBLAS matmul of a compiled train step with its shapes, from an XLA dump.

  XLA_FLAGS=--xla_dump_to=/tmp/dump python bench/bench_train.py "--cases=speedrun B128" --backends=triton ...
  python bench/dev_hlo_matmuls.py /tmp/dump

A profile names kernels (nvjet_...) and the HLO op that launched them (custom-call.N, or the
command buffer holding it); this maps each custom-call to its operand and result shapes, so a
slow kernel can be tied to the matmul it computes.
"""
import glob
import os
import re
import sys


def main():
  files = sorted(glob.glob(os.path.join(sys.argv[1], "*jit_step_fn*after_optimizations.txt")))
  if not files:
    sys.exit(f"no *jit_step_fn*after_optimizations.txt under {sys.argv[1]}")
  text = open(files[-1]).read()
  for line in text.splitlines():
    if "custom_call_target=\"__cublas" not in line:
      continue
    name = re.search(r"%?([\w.\-]+) = ", line).group(1)
    shape = r"[a-z0-9]+\[[\d,]*\](?:\{[\d,]*\})?"
    result = re.search(r"= \(?(" + shape + ")", line).group(1)
    operands = re.findall("(" + shape + r") %?[\w.\-]+[,)]", line.split("custom-call(", 1)[1])[:2]
    dims = re.search(r'"dot_dimension_numbers":\{([^}]*)\}', line)
    print(f"{name:18s} {result:26s} <- {' x '.join(operands):50s} {dims.group(1) if dims else ''}")

if __name__ == "__main__":
  main()
