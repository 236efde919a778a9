"""Dev tool: prints the HLO of named fusions of a compiled train step (the instruction and the
computation it calls), from an XLA dump, so a profile's kernel name can be read as the ops it fuses.

  XLA_FLAGS=--xla_dump_to=/tmp/dump python bench/bench_train.py "--cases=speedrun B128" --backends=triton ...
  python bench/dev_hlo_fusion.py /tmp/dump loop_convert_fusion_3 [more names]

A profile writes the HLO name with '_' where the dump has '.' (loop_convert_fusion.3).
"""
import glob
import os
import re
import sys


def main():
  files = sorted(glob.glob(os.path.join(sys.argv[1], "*jit_step_fn*after_optimizations.txt")))
  if not files:
    sys.exit(f"no *jit_step_fn*after_optimizations.txt under {sys.argv[1]}")
  lines = open(files[-1]).read().splitlines()
  for want in sys.argv[2:]:
    name = re.sub(r"_(\d+)$", r".\1", want)
    calls = [l for l in lines if re.search(rf"%{re.escape(name)} = ", l)]
    for line in calls:
      print(f"== {want}\n{line.strip()[:2000]}")
      called = re.search(r"calls=%([\w.\-]+)", line)
      if not called:
        continue
      start = next(i for i, l in enumerate(lines) if re.match(rf"%?{re.escape(called.group(1))} ", l.strip()))
      end = next(i for i in range(start, len(lines)) if lines[i].strip() == "}")
      print("\n".join(l[:400] for l in lines[start:end + 1]))
    if not calls:
      print(f"== {want}: not found")


if __name__ == "__main__":
  main()
