"""Dev tool: prints the HLO of named fusions of a compiled train step (the instruction and the
computation it calls), from an XLA dump, so a profile's kernel name can be read as the ops it fuses.

  XLA_FLAGS=--xla_dump_to=/tmp/dump python bench/bench_train.py "--cases=speedrun B128" --backends=triton ...
  python bench/dev_hlo_fusion.py /tmp/dump loop_convert_fusion_3 [more names]
  python bench/dev_hlo_fusion.py /tmp/dump --timeline=OUT.json [--after_gemm_us=60 | --tail_us=500]

A profile writes the HLO name with '_' where the dump has '.' (loop_convert_fusion.3). With
--timeline (bench_train.py's --out JSON of the same profiled run), it lists the step's kernels from
its start to that many us after its first GEMM, each with its fusion's HLO line (output shapes,
operands, the op that made it): what the first GEMM waits behind. With --tail_us, the kernels that
start in the step's last that many us instead (what AdamW waits behind).
"""
import glob
import json
import os
import re
import sys


def _hlo_name(kernel):
  return re.sub(r"_(\d+)$", r".\1", kernel)


def _instruction(lines, kernel):
  """The dump's line that defines the fusion a profile calls `kernel`, or None (library kernels)."""
  name = _hlo_name(kernel)
  return next((l.strip() for l in lines if re.search(rf"%{re.escape(name)} = ", l)), None)


def _timeline(lines, path, after_gemm_us, tail_us=None):
  t = json.load(open(path))["results"][0]["profile"]["timeline_one_step"]
  gemm = next(row for row in t if row[0].startswith("nvjet"))
  end = max(start + dur for _, start, dur, _ in t)
  print(f"first GEMM at {gemm[1]:.1f} us, last kernel ends at {end:.1f} us")
  for kernel, start, dur, _ in t:
    if tail_us is None and start > gemm[1] + after_gemm_us:
      break
    if tail_us is not None and start < end - tail_us:
      continue
    print(f"{start:7.1f} {dur:6.1f} {kernel:34s} {(_instruction(lines, kernel) or '')[:260]}")


def main():
  files = sorted(glob.glob(os.path.join(sys.argv[1], "*jit_step_fn*after_optimizations.txt")))
  if not files:
    sys.exit(f"no *jit_step_fn*after_optimizations.txt under {sys.argv[1]}")
  lines = open(files[-1]).read().splitlines()
  flags = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--"))
  if "timeline" in flags:
    _timeline(lines, flags["timeline"], float(flags.get("after_gemm_us", 60)),
              float(flags["tail_us"]) if "tail_us" in flags else None)
  for want in [a for a in sys.argv[2:] if not a.startswith("--")]:
    line = _instruction(lines, want)
    if line is None:
      print(f"== {want}: not found")
      continue
    print(f"== {want}\n{line[:2000]}")
    called = re.search(r"calls=%([\w.\-]+)", line)
    if not called:
      continue
    start = next(i for i, l in enumerate(lines) if re.match(rf"%?{re.escape(called.group(1))} ", l.strip()))
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "}")
    print("\n".join(l[:400] for l in lines[start:end + 1]))


if __name__ == "__main__":
  main()
