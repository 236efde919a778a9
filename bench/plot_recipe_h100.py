"""Plots the H100 recipe runs at the speedrun shape: val loss against training tokens, one line per run.

  python bench/plot_recipe_h100.py [--results=bench/results/recipe_h100_sample_lr_batch]
                                   [--out=docs/recipe_h100_lr_batch.png]

Reads the folder's summary.json (val_loss_by_tokens, written when the runs' metrics.jsonl files
were collected; the commands are in it too) and draws three panels: peak lr, schedule and head,
batch size. docs/SPEEDRUN_BENCHMARK.md shows the picture.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PANELS = (  # title, run names (keys of val_loss_by_tokens)
    ("B128, WSD vs cosine, peak lr", ("lr1e-3_cosine_s0 (earlier session)", "lr2e-3", "lr4e-3", "lr5e-4_wsd",
                                      "lr7e-4_wsd", "lr1e-3_wsd", "lr2e-3_wsd")),
    ("B128 WSD lr 1e-3: seeds, untied head", ("lr1e-3_wsd", "lr1e-3_wsd_s1", "lr1e-3_cosine_s0 (earlier session)",
                                             "lr1e-3_cosine_s1 (earlier session)", "lr1e-3_wsd_untied")),
    ("batch size at equal tokens (WSD)", ("lr1e-3_wsd", "lr1e-3_wsd_s1", "b64_s0", "b64_s1", "b64_lr7e-4",
                                          "b256_lr1e-3", "b256_lr2e-3")),
)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "recipe_h100_sample_lr_batch"))
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "recipe_h100_lr_batch.png"))
  args = p.parse_args()
  with open(os.path.join(args.results, "summary.json")) as f:
    summary = json.load(f)
  runs = summary["val_loss_by_tokens"]
  fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4.5), sharey=True)
  for ax, (title, names) in zip(axes, PANELS):
    for name in names:
      pts = sorted((int(t), v) for t, v in runs[name].items())
      ax.plot([t / 1e6 for t, _ in pts], [v for _, v in pts], marker="o", ms=3,
              label=f"{name}: {pts[-1][1]:.3f}")
    ax.set_title(title)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylim(2.8, 5.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("val loss (whole sample val split)")
  fig.suptitle(f"speedrun shape on the bundled TinyStories sample, {summary['device']}, {summary['date']}")
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
