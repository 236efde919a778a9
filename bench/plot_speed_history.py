"""Plots the speedrun step's throughput session by session, against the 4.5M tokens/s bar and the
peers' references, from the results table of docs/SPEEDRUN_BENCHMARK.md.

  python bench/plot_speed_history.py [--doc=docs/SPEEDRUN_BENCHMARK.md] [--out=docs/speed_history.png]

The table is the record (each row names its device, commit, command and JSON), so the plot reads it
rather than a copy: each row whose attention column is "triton, B128" and whose step has a bold
figure (the tree of that session, as opposed to the variants beside it) gives one point per bold
ms/step figure, as tokens/s = 128 x 256 / ms. A row's device is its own or, for "same machine"
rows, the nearest row above that names one. H100 and H200 points are drawn apart: the H200's faster
memory made the same step 4-9% quicker (docs/model.md, "Thirty-ninth session").
"""
import argparse
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = 128 * 256
BAR, PEERS = 4.5, (("plain JAX + cuDNN", 2.64), ("PyTorch compile + flash SDPA", 2.66))


def read_points(doc):
  """[(date, label, device, [tokens/s in M])] oldest first, from the doc's results table."""
  text = open(doc, encoding="utf-8").read()
  section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
  rows, device = [], None
  for line in section.splitlines():
    if not line.startswith("| 20"):
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 8:
      continue
    date_cell, device_cell, attention, ms_cell = cells[0], cells[1], cells[4], cells[5]
    chips = re.findall(r"H[12]00", device_cell)
    if chips:   # the chip the cell names first ("1x H200 (... no H100 ...)" is an H200)
      device = chips[0]
    bold = re.findall(r"\*\*([^*]+)\*\*", ms_cell)
    if attention != "triton, B128" or not bold or device is None:
      continue
    ms = [float(x) for x in re.findall(r"\d+\.\d+", bold[0])]
    date = date_cell.split()[0]
    session = re.search(r"\(([^)]*session)\)", date_cell)
    rows.append((date, session.group(1) if session else "", device, [TOKENS / m / 1e3 for m in ms]))
  return rows[::-1]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--doc", default=os.path.join(ROOT, "docs", "SPEEDRUN_BENCHMARK.md"))
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "speed_history.png"))
  args = p.parse_args()
  points = read_points(args.doc)
  if not points:
    raise SystemExit(f"no 'triton, B128' rows with a bold ms/step figure in {args.doc}'s results table")
  fig, ax = plt.subplots(figsize=(10, 4.5))
  for dev, style in (("H100", dict(color="tab:blue", marker="o")), ("H200", dict(color="tab:orange", marker="s"))):
    xs = [i for i, pt in enumerate(points) for _ in pt[3] if pt[2] == dev]
    ys = [y for pt in points if pt[2] == dev for y in pt[3]]
    if xs:
      ax.scatter(xs, ys, label=f"this repo, {dev} (the tree's B128 step)", s=22, **style)
  ax.axhline(BAR, color="tab:green", linestyle="--", label=f"the bar, {BAR}M tokens/s (50% MFU)")
  for (name, value), style in zip(PEERS, (":", "-.")):
    ax.axhline(value, color="gray", linestyle=style, label=f"{name}, {value}M (H100)")
  ax.set_xticks(range(len(points)))
  ax.set_xticklabels([f"{pt[0][5:]} {pt[1].replace(' session', '')}".strip() for pt in points], rotation=70,
                     fontsize=7)
  ax.set_ylabel("tokens/s (millions)")
  ax.set_ylim(2.4, 4.7)
  ax.set_title("Speedrun step throughput (d512 L4 H16 T256 V10k, batch 128), per session")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 0.14))
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"{len(points)} sessions' rows -> {args.out}")


if __name__ == "__main__":
  main()
