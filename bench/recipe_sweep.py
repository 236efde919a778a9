"""Tokens-to-target recipe sweep on the bundled TinyStories sample: one change at a time, same tokens.

  python bench/recipe_sweep.py                  # runs every variant not yet in the JSON (resumable)
  python bench/recipe_sweep.py --seeds=1        # every variant again at seed 1 (<name>@seed1)
  python bench/recipe_sweep.py --only=lr_x2     # just these (comma-separated names)
  python bench/recipe_sweep.py --report         # no training: table, plot, from the JSON
  python bench/recipe_sweep.py --list           # the variants and their config diffs

A proxy for issue 8's "tokens to target": a small model (configs/tiny.py's shape) trained with
train.train for a fixed token budget on the sample's train split (1.09M tokens, 10k BPE), evaluated
on its val split. Every variant differs from the base in ONE thing and sees the same number of tokens;
the base runs with several seeds so the noise band is measured, not guessed. A variant whose config key
or optimizer does not exist in this checkout is skipped with a message (rerun once it lands).

Per variant the JSON records the config diff, the val-loss curve (first 32k val tokens, every 40,960
train tokens), the final loss over the WHOLE val split (97k tokens, the number the table ranks by),
wall times, and the git commit + sha256 of the code that ran it. Runs go to --workdir_root (not the
repo). Writes bench/results/recipe_sweep_cpu.json and docs/recipe_curves.png; docs/RECIPE.md reads them.
These are a 2.3M-param model's first ~330k tokens on a shared CPU, not the speedrun.
"""
import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import data  # pylint: disable=wrong-import-position
import model  # pylint: disable=wrong-import-position
import train  # pylint: disable=wrong-import-position
from configs import tiny  # pylint: disable=wrong-import-position
from errors import UserError  # pylint: disable=wrong-import-position

RESULTS = os.path.join(ROOT, "bench", "results", "recipe_sweep_cpu.json")
PLOT = os.path.join(ROOT, "docs", "recipe_curves.png")
CODE_FILES = ("model.py", "train.py", "adamw.py", "muon.py")

BATCH = 8                       # base sequences per step (tiny.py's)
BUDGET_TOKENS = 160 * BATCH * 256   # 327,680 tokens: 2-4 min a run on 2 shared cores
EVAL_EVERY_TOKENS = 20 * BATCH * 256  # 8 points per curve, at the same tokens for every batch size
WARMUP_FRAC = 0.1               # warmup is 10% of the steps, i.e. the same tokens at every batch
BASE_SEEDS = (0, 1, 2)


def base_config(batch=BATCH):
  """configs/tiny.py's model with the sweep's budget; values the variants change are set explicitly
  so a later edit of tiny.py's defaults cannot move the base under the earlier runs."""
  c = tiny.get_config()
  c.data.dir = os.path.join(ROOT, "data", "tinystories_sample")
  c.model.update(vocab_size=0, context_length=256, d_model=128, n_layers=4, n_heads=4, d_ff=512,
                 tie_embeddings=True, compute_dtype="float32", attention="mha", attention_backend="xla")
  t = c.train
  t.update(lr=3e-3, min_lr=3e-4, schedule="cosine", decay_frac=0.2, weight_decay=0.1, b1=0.9,
           b2=0.95, grad_clip=1.0, seed=0, target_val_loss=0.0, eval_tokens=32_768, max_to_keep=1)
  set_batch(c, batch)
  return c


def set_batch(c, batch):
  """Batch size at the fixed token budget: steps, warmup and eval cadence follow in tokens."""
  T = c.model.context_length
  steps = BUDGET_TOKENS // (batch * T)
  c.train.update(batch_size=batch, steps=steps, warmup_steps=max(1, round(WARMUP_FRAC * steps)),
                 eval_every=EVAL_EVERY_TOKENS // (batch * T), log_every=EVAL_EVERY_TOKENS // (batch * T),
                 ckpt_every=steps)


# Run in this order (most informative first, in case the sweep is cut short).
# (name, what it tests, diff: {"model.key" | "train.key": value}). Width/depth keep the head dim at 32
# and the non-embedding params at ~1.03M (base 1.05M); the 10k x D embedding is not matched.
VARIANTS = [
    *[(f"base_seed{s}", "the baseline (noise band)", {"train.seed": s}) for s in BASE_SEEDS],
    ("lr_x0.5", "peak lr 1.5e-3 (min_lr x0.5 too)", {"train.lr": 1.5e-3, "train.min_lr": 1.5e-4}),
    ("lr_x2", "peak lr 6e-3 (min_lr x2 too)", {"train.lr": 6e-3, "train.min_lr": 6e-4}),
    ("lr_x4", "peak lr 1.2e-2 (min_lr x4 too)", {"train.lr": 1.2e-2, "train.min_lr": 1.2e-3}),
    ("qk_norm", "RMSNorm on q and k per head", {"model.qk_norm": True}),
    ("zero_init_out", "wo and w2 start at zero", {"model.zero_init_out": True}),
    ("logit_softcap", "logits = 30 tanh(logits / 30)", {"model.logit_softcap": 30.0}),
    ("muon", "Muon on hidden matrices, AdamW on the rest, same lr", {"train.optimizer": "muon"}),
    ("batch_x0.5", "batch 4, twice the steps (same tokens, same lr)", {"train.batch_size": 4}),
    ("batch_x2", "batch 16, half the steps (same tokens, same lr)", {"train.batch_size": 16}),
    ("wsd", "warmup-stable-decay, last 20% linear to min_lr", {"train.schedule": "wsd"}),
    ("untied_head", "separate D x V head; embedding N(0,1)", {"model.tie_embeddings": False}),
    ("wide_shallow", "d192 L2 H6 F640 (non-embed 1.03M)",
     {"model.d_model": 192, "model.n_layers": 2, "model.n_heads": 6, "model.d_ff": 640}),
    ("narrow_deep", "d96 L7 H3 F384 (non-embed 1.03M)",
     {"model.d_model": 96, "model.n_layers": 7, "model.n_heads": 3, "model.d_ff": 384}),
]


def missing_feature(diff):
  """Why this checkout cannot run the diff (a key nobody implements yet), or None."""
  for key, value in diff.items():
    group, name = key.split(".")
    if group == "model" and name not in model.default_model_config():
      return f"config.model.{name} is not in model.py's default_model_config() yet"
    if key == "train.optimizer" and value not in getattr(train, "OPTIMIZERS", ("adamw",)):
      return f"train.py does not know optimizer {value!r} yet (train.OPTIMIZERS)"
  return None


def variant_config(diff):
  c = base_config()
  for key, value in diff.items():
    group, name = key.split(".")
    if key == "train.batch_size":
      set_batch(c, value)
    else:
      c[group][name] = value  # tiny.py may lack a new key: model.py / train.py default it
  return c


# ----------------------------------------------------------------------------- provenance


def git_commit():
  def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  head = git("rev-parse", "HEAD") or "unknown"
  return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def code_hashes():
  out = {}
  for name in CODE_FILES:
    path = os.path.join(ROOT, name)
    if os.path.exists(path):
      out[name] = data.file_sha256(path)[:12]
  return out


# What this process imported (the tree may change under a long sweep; later edits do not apply here).
LOADED = {"git_commit": git_commit(), "code_sha256": code_hashes()}


def load_results():
  if os.path.exists(RESULTS):
    with open(RESULTS) as f:
      return json.load(f)
  return {"variants": {}}


def save_results(res):
  res.update(benchmark="recipe_sweep_cpu", device=f"{jax.devices()[0].device_kind} x {os.cpu_count()} cores "
             "(shared with other jobs)", date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                 timespec="seconds"), git_commit=git_commit(), command="python bench/recipe_sweep.py",
             budget_tokens=BUDGET_TOKENS, eval_every_tokens=EVAL_EVERY_TOKENS,
             base_config={"model": {k: v for k, v in base_config().model.to_dict().items()},
                          "train": base_config().train.to_dict()})
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS + ".tmp", "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
  os.replace(RESULTS + ".tmp", RESULTS)


# ----------------------------------------------------------------------------- one run


def full_val_loss(workdir):
  """Mean next-token loss of the final checkpoint over the whole val split (train's eval code)."""
  params, config = train.load_checkpoint(workdir)
  val_N = data.load_split(config.data.dir, "val")
  windows, weight = train.eval_windows(val_N, config.model.context_length, 0, 16)
  return (float(train.make_eval_fn(config)(params, windows, weight)),
          int(weight.sum()) * config.model.context_length)


def run_variant(name, desc, diff, workdir_root):
  workdir = os.path.join(workdir_root, name)
  shutil.rmtree(workdir, ignore_errors=True)  # a half-finished run restarts from step 0
  config = variant_config(diff)
  print(f"\n=== {name}: {desc} | {diff} | {config.train.steps} steps x {config.train.batch_size} "
        f"x {config.model.context_length} tokens", flush=True)
  t0 = time.perf_counter()
  entry = {"description": desc, "diff": diff, "seed": config.train.seed, "steps": config.train.steps,
           "batch_size": config.train.batch_size, **LOADED,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  try:
    summary = train.train(config, workdir)
    entry.update(status="ok", final_val_loss_32k=summary["final_val_loss"], tokens=summary["tokens"],
                 n_params=summary["n_params"], train_s=round(summary["train_s"], 1),
                 compile_s=round(summary["compile_s"], 1), tokens_per_s=round(summary["tokens_per_s"]))
    entry["final_val_loss"], entry["val_tokens"] = full_val_loss(workdir)
  except UserError as e:  # train.py's NaN stop: a diverged run is a result too
    entry.update(status="diverged", error=str(e)[:300], final_val_loss=None)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    events = [json.loads(line) for line in f if line.strip()]
  entry["curve"] = [[e["tokens"], round(e["val_loss"], 5)] for e in events if e["event"] == "eval"]
  entry["train_curve"] = [[e["tokens"], round(e["loss"], 5)] for e in events if e["event"] == "train"]
  entry["wall_s"] = round(time.perf_counter() - t0, 1)
  return entry


# ----------------------------------------------------------------------------- report


def groups(res):
  """{variant: {seed: entry}}: "lr_x2@seed1" is lr_x2 at seed 1; the base_seed<N> runs form "base"."""
  out = {}
  for key, v in res["variants"].items():
    name = "base" if key.startswith("base_seed") else key.split("@")[0]
    out.setdefault(name, {})[v["seed"]] = v
  return out


def table(res):
  """Markdown rows sorted by mean final val loss (whole val split) over a variant's seeds.

  delta: variant mean - base mean. paired: mean over the variant's seeds of (variant - base at the
  same seed; same init draw and data order). The noise of delta is sigma * sqrt(1/n_variant + 1/n_base),
  sigma the base seeds' std: "beyond noise" means |delta| > 2 of that.
  """
  g = groups(res)
  base = {s: v["final_val_loss"] for s, v in g.get("base", {}).items() if v.get("final_val_loss")}
  mean = float(np.mean(list(base.values()))) if base else None
  sigma = float(np.std(list(base.values()), ddof=1)) if len(base) > 1 else None
  rows = []
  for name, runs in g.items():
    losses = {s: v.get("final_val_loss") for s, v in runs.items()}
    ok = {s: x for s, x in losses.items() if x is not None}
    first = runs[min(runs)]
    rows.append((float(np.mean(list(ok.values()))) if ok else math.inf, name, first, losses, ok,
                 float(np.mean([v.get("train_s", 0) for v in runs.values()]))))
  lines = ["| variant | change | seeds | final val loss | delta vs base | paired delta | noise (2 sd) | "
           "beyond noise? | train s |", "|---|---|---|---|---|---|---|---|---|"]
  for loss, name, first, losses, ok, train_s in sorted(rows, key=lambda r: r[0]):
    desc = "baseline (lr 3e-3 cosine, B8, tied)" if name == "base" else first["description"]
    seeds = ",".join(str(s) for s in sorted(losses))
    if not ok:
      lines.append(f"| {name} | {desc} | {seeds} | diverged | | | | | |")
      continue
    each = "" if len(ok) == 1 else " (" + ", ".join(f"{ok[s]:.3f}" for s in sorted(ok)) + ")"
    if name == "base" or mean is None:
      lines.append(f"| {name} | {desc} | {seeds} | {loss:.4f}{each} | | | | | {train_s:.0f} |")
      continue
    d = loss - mean
    paired = [ok[s] - base[s] for s in ok if s in base]
    paired_s = f"{np.mean(paired):+.4f}" if paired else ""
    band = 2 * sigma * math.sqrt(1 / len(ok) + 1 / len(base)) if sigma else None
    verdict = "" if band is None else ("**yes, better**" if d < -band else "yes, worse" if d > band else "no")
    lines.append(f"| {name} | {desc} | {seeds} | {loss:.4f}{each} | {d:+.4f} | {paired_s} | "
                 f"{'' if band is None else f'{band:.4f}'} | {verdict} | {train_s:.0f} |")
  head = (f"base: {len(base)} seeds {', '.join(f'{base[s]:.4f}' for s in sorted(base))}: mean {mean:.4f}, "
          f"sd {sigma:.4f}, spread {max(base.values()) - min(base.values()):.4f}" if sigma
          else "base: fewer than 2 seeds finished, no noise band yet")
  return head, "\n".join(lines)


def plot(res):
  """Val loss vs tokens: each variant's mean curve over its seeds; the base's seed range shaded."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  g = groups(res)
  names = [n for n in g if n != "base"]
  colors = plt.get_cmap("tab10").colors  # 10 strong colours; a second round of lines is dashed
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
  for ax, zoom in ((axes[0], False), (axes[1], True)):
    for name, runs in g.items():
      curves = [np.array(v["curve"]) for v in runs.values() if v.get("final_val_loss") is not None]
      n = min((len(c) for c in curves), default=0)
      if n == 0:
        continue
      stack = np.stack([c[:n] for c in curves])
      x, y = stack[0, :, 0] / 1e3, stack[:, :, 1].mean(0)
      keep = x >= BUDGET_TOKENS / 2e3 if zoom else np.ones_like(x, bool)
      if name == "base":
        ax.fill_between(x[keep], stack[:, keep, 1].min(0), stack[:, keep, 1].max(0), color="gray",
                        alpha=0.3, label=f"base seed range ({len(curves)} seeds)")
        ax.plot(x[keep], y[keep], "o-", color="black", lw=2, ms=3, label="base mean")
      else:
        label = name if len(curves) == 1 else f"{name} (mean of {len(curves)})"
        i = names.index(name)
        ax.plot(x[keep], y[keep], "o" + ("-" if i < 10 else "--"), color=colors[i % 10], lw=1.3, ms=2.5,
                label=label)
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("val loss (nats/token, first 32k val tokens)")
    ax.grid(alpha=0.3)
  axes[0].set_title("val loss vs tokens, one change at a time")
  axes[1].set_title("second half, zoomed")
  axes[0].legend(fontsize=7, ncol=2, loc="upper right")  # the empty corner: loss > 6 late on
  fig.suptitle("Proxy: 2.3M-param model, bundled TinyStories sample (1.09M train tokens), 2 shared CPU "
               "cores; not the speedrun", fontsize=9)
  fig.tight_layout()
  fig.savefig(PLOT, dpi=110)
  plt.close(fig)


def report(res):
  head, rows = table(res)
  print("\n" + head + "\n" + rows, flush=True)
  if res["variants"]:
    plot(res)
    print(f"wrote {PLOT}")


def planned(seeds):
  """(key, description, diff) to run: the base seeds, then every variant at each of `seeds`."""
  out = []
  for s in seeds:
    for name, desc, diff in VARIANTS:
      if name.startswith("base_seed"):
        if s == seeds[0]:
          out.append((name, desc, diff))
      else:
        out.append((name if s == 0 else f"{name}@seed{s}", desc, {**diff, "train.seed": s}
                    if s else diff))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
  p.add_argument("--seeds", default="0", help="comma-separated seeds for the non-base variants; "
                 "seed s > 0 is recorded as <name>@seed<s> and compared with base_seed<s>")
  p.add_argument("--rerun", action="store_true", help="run --only variants again even if recorded")
  p.add_argument("--report", action="store_true", help="no training: print the table, redraw the plot")
  p.add_argument("--list", action="store_true", help="print the variants and exit")
  p.add_argument("--workdir_root", default="/tmp/recipe_sweep", help="run directories (not the repo)")
  args = p.parse_args()
  known = [v[0] for v in VARIANTS]
  only = [n for n in args.only.split(",") if n]
  bad = [n for n in only if n not in known]
  if bad:
    raise SystemExit(f"error: unknown variant(s) {bad}; choose from {known}")
  if args.list:
    for name, desc, diff in VARIANTS:
      print(f"{name:15s} {desc:55s} {diff}   {missing_feature(diff) or ''}")
    return
  res = load_results()
  if not args.report:
    for key, desc, diff in planned([int(s) for s in args.seeds.split(",")]):
      if only and key.split("@")[0] not in only:
        continue
      if key in res["variants"] and not (args.rerun and only):
        print(f"skip {key}: already in {os.path.relpath(RESULTS, ROOT)}", flush=True)
        continue
      why = missing_feature(diff)
      if why:
        print(f"skip {key}: {why}; rerun this script once it lands", flush=True)
        continue
      res["variants"][key] = run_variant(key, desc, diff, args.workdir_root)
      save_results(res)  # after every run: an interrupted sweep keeps what it finished
  report(res)


if __name__ == "__main__":
  main()
