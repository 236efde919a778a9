"""Dev tool: the interleaved timings of bench/dev_step_variants.sh, paired by round.

  python bench/dev_paired.py OUT_DIR base egrad eall     # the first variant is the reference

Reads OUT_DIR/step_<variant>_<round>.json and prints, per variant, its ms a step round by round,
the mean, and against the reference the paired difference (mean and each round's), the rounds it
was faster in, and a paired t statistic. A step moves ~0.03-0.05 ms between rounds on one machine,
so a lever of that size needs several rounds before |t| says anything (|t| > ~2.8 at 5 rounds for
95%); the sessions' verdicts in docs/SPEEDRUN_BENCHMARK.md quote these numbers.
"""
import glob
import json
import os
import re
import statistics
import sys


def load(out_dir, variant):
  """{round: ms a step} of one variant."""
  runs = {}
  for path in glob.glob(os.path.join(out_dir, f"step_{variant}_*.json")):
    m = re.fullmatch(rf"step_{re.escape(variant)}_(\d+)\.json", os.path.basename(path))
    if m:
      runs[int(m.group(1))] = json.load(open(path))["results"][0]["ms_per_step"]
  return runs


def main():
  if len(sys.argv) < 3:
    sys.exit(__doc__)
  out_dir, names = sys.argv[1], sys.argv[2:]
  ref = load(out_dir, names[0])
  for name in names:
    runs = load(out_dir, name)
    if not runs:
      print(f"{name}: no step_{name}_<round>.json under {out_dir}")
      continue
    line = f"{name:10s} " + " / ".join(f"{runs[r]:.3f}" for r in sorted(runs)) + f"  mean {statistics.mean(runs.values()):.3f}"
    common = sorted(set(runs) & set(ref))
    if name != names[0] and common:
      d = [runs[r] - ref[r] for r in common]
      line += f"  vs {names[0]}: {statistics.mean(d):+.3f} ({' '.join(f'{x:+.3f}' for x in d)}), faster in {sum(x < 0 for x in d)} of {len(d)}"
      if len(d) > 1 and statistics.stdev(d) > 0:
        line += f", paired t {statistics.mean(d) / (statistics.stdev(d) / len(d) ** 0.5):+.1f}"
    print(line)


if __name__ == "__main__":
  main()
