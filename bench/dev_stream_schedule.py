"""Dev tool: where XLA scheduled the async calls of streams.py (model's weight gradients on a second
stream) in a compiled train step, from an XLA dump: for each call-start, the instructions the
schedule puts between it and its call-done: what can overlap it (none means no overlap).

  XLA_FLAGS=--xla_dump_to=/tmp/dump python -c "import streams; streams.STREAM = 1; ..." (bench_train.py)
  python bench/dev_stream_schedule.py /tmp/dump
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
  print(files[-1], "call-start:", text.count("call-start("), "call-done:", text.count("call-done("))
  for comp in re.split(r"\n(?=\S)", text):   # one computation per top-level block
    lines = [l.strip() for l in comp.splitlines()]
    starts = [(i, re.match(r"%?([\w.\-]+) = ", l).group(1)) for i, l in enumerate(lines) if " call-start(" in l]
    for i, name in starts:
      done = next((j for j in range(i + 1, len(lines)) if "call-done(" in lines[j] and f"%{name}" in lines[j]), None)
      between = [] if done is None else [re.match(r"%?([\w.\-]+) = ", l).group(1) for l in lines[i + 1:done]
                                          if re.match(r"%?[\w.\-]+ = ", l)]
      print(f"{comp.splitlines()[0][:60]} | {name}: {len(between)} instructions before its done: "
            f"{' '.join(between[:12])}{' ...' if len(between) > 12 else ''}")


if __name__ == "__main__":
  main()
