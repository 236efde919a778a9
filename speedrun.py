"""One command from nothing to a sample story: data -> train -> eval -> sample, each stage timed.

  python speedrun.py --config=configs/tinystories_h100.py     # H100: download, BPE, encode, train to 1.45
  python speedrun.py --config=configs/tinystories_h100.py --local_dir=DIR   # the two .txt files already here
  python speedrun.py --config=configs/tiny.py                 # CPU: the bundled sample, a tiny model

Stages: data (data.prepare: download or the bundled sample, BPE, encode), train (train.train), eval
(val loss of the last checkpoint over the whole val split, --final_eval_tokens=0), sample (one story
from "Once upon a time", fixed seed). A rerun skips what is finished: data.py's stages check
stages.json, and training is skipped when the workdir's latest checkpoint is the last step or had
reached config.train.target_val_loss (otherwise train.py resumes from it). Ctrl-C while training
saves a checkpoint (train.py); the same command continues. <workdir>/speedrun.json records the
stage times, the val loss, the training tokens and tokens/s (written after every stage).
"""
import datetime
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax

import data
import decode
import errors
import sample  # its generation flags (--max_new_tokens, --temperature, --seed, ...) are ours too
import train
from errors import UserError

ROOT = os.path.dirname(os.path.abspath(__file__))
PROMPT = "Once upon a time"
_BASE_URL = flags.DEFINE_string("base_url", None, "--config.data.dataset=tinystories: a mirror of the "
                                f"TinyStories files (default ${data.BASE_URL_ENV} or Hugging Face).")
_LOCAL_DIR = flags.DEFINE_string("local_dir", None, "--config.data.dataset=tinystories: a directory "
                                 "that already holds the two TinyStoriesV2-GPT4 .txt files.")
_TRAIN_FILE = flags.DEFINE_string("train_file", None, "--config.data.dataset=text: the training text.")
_VAL_FILE = flags.DEFINE_string("val_file", None, "--config.data.dataset=text: the validation text "
                                "(default: 1% split off train_file).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Processes for BPE and encoding "
                                    "(default: all cores).")
_FINAL_EVAL_TOKENS = flags.DEFINE_integer("final_eval_tokens", 0, "Val tokens of the final eval (0 = the "
                                          "whole val split, the benchmark's metric).")
# sample.py's flags that pick another inference path: not part of the speedrun.
_SAMPLE_ONLY = ("prompt_file", "use_mla", "mla_rank", "sparse_top_k", "train_indexer_steps", "eval_tokens",
                "attention")


# ----------------------------------------------------------------------------- stages


def prepare_data(config, **opts):
  """data.prepare into config.data.dir; returns True when it rebuilt nothing (every output kept)."""
  d = config.data
  before = _snapshot(d.dir)
  vocab = config.model.vocab_size
  if not vocab and os.path.exists(os.path.join(d.dir, "meta.json")):
    vocab = data.read_meta(d.dir)["vocab_size"]  # vocab 0 = whatever the prepared data has
  data.prepare(d.dataset, d.dir, vocab_size=vocab or data.DEFAULT_VOCAB_SIZE,
               **{k: v for k, v in opts.items() if v is not None})
  return bool(before) and "meta.json" in before and _snapshot(d.dir) == before


def _snapshot(path):
  # stages.json is rewritten by every run (its hash cache); the outputs are what count.
  if not os.path.isdir(path):
    return {}
  return {n: (os.stat(os.path.join(path, n)).st_size, os.stat(os.path.join(path, n)).st_mtime_ns)
          for n in os.listdir(path) if n != "stages.json" and not n.endswith(".tmp")}


def _steps(workdir):
  """Finished checkpoint steps (Orbax names a step's directory by its number once it is complete)."""
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []


def _events(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def finished(workdir, config):
  """True when the workdir's run needs no more training (train.py would resume it otherwise).

  Finished = the latest checkpoint is step config.train.steps, or metrics.jsonl has an eval at that
  step at or below config.train.target_val_loss (train.py checkpoints a target stop). The run must
  be of this config's model and of the tokenizer now in config.data.dir.
  """
  steps = _steps(workdir)
  if not steps:
    return False
  last, target = steps[-1], config.train.target_val_loss
  at_target = target > 0 and any(e["event"] == "eval" and e["step"] == last and e["val_loss"] <= target
                                 for e in _events(workdir))
  if last < config.train.steps and not at_target:
    return False
  _, ckpt_config = train.load_checkpoint(workdir, last)
  meta = data.read_meta(config.data.dir)
  want = config.model.to_dict()
  want["vocab_size"] = want["vocab_size"] or meta["vocab_size"]
  if ckpt_config.model.to_dict() != want:
    raise UserError(f"{workdir} holds a finished run of another model ({ckpt_config.model.to_dict()}); "
                    "pass a new --workdir for this config, or the config that run used")
  if ckpt_config.data.tokenizer_sha256 != meta["tokenizer_sha256"]:
    raise UserError(f"{workdir} was trained with another tokenizer than the one now in {config.data.dir} "
                    "(the data was prepared again with other settings); pass a new --workdir")
  return True


def training_figures(workdir, config):
  """Tokens, training seconds (compile, eval and saves excluded; summed over resumes) and the first
  eval at or below the target, read back from train.py's metrics.jsonl."""
  events = _events(workdir)
  last = max((e for e in events if "train_s" in e), key=lambda e: (e["step"], e["train_s"]), default=None)
  if last is None:
    return {"steps": 0, "tokens": 0, "train_s": 0.0, "tokens_per_s": None, "target_reached": None}
  target = config.train.target_val_loss
  hit = next((e for e in events if target > 0 and e["event"] == "eval" and e["val_loss"] <= target), None)
  return {"steps": last["step"], "tokens": last["tokens"], "train_s": last["train_s"],
          "tokens_per_s": last["tokens"] / last["train_s"] if last["train_s"] > 0 else None,
          "target_reached": hit and {k: hit[k] for k in ("step", "tokens", "train_s", "val_loss")}}


def evaluate(params, config, val_N, eval_tokens):
  """Mean next-token loss over the first eval_tokens of val_N (0 = all): train.py's eval set."""
  T = config.model.context_length
  batch = max(config.train.batch_size // config.train.microbatches, 1)
  windows_NBT1, weight_NB = train.eval_windows(val_N, T, eval_tokens, batch)
  loss = float(train.make_eval_fn(config)(params, windows_NBT1, weight_NB))
  return loss, int(weight_NB.sum()) * T


def story(params, config, prompt, max_new_tokens, temperature, top_k, top_p, seed):
  """One generated story (the prompt and its continuation up to <|endoftext|>)."""
  tok = sample.load_tokenizer(config)
  eos = tok.token_id("<|endoftext|>")
  params, kind = decode.prepare(params, config.model)
  gen = sample.Generator(params, config.model, kind, temperature, top_k, top_p, eos_id=eos)
  outs, _, _ = gen.generate([[eos] + tok.encode(prompt)], max_new_tokens, seed)
  return prompt + tok.decode(outs[0])


# ----------------------------------------------------------------------------- the chain


def run(config, workdir, *, data_opts=None, eval_tokens=0, prompt=PROMPT, max_new_tokens=200,
        temperature=0.8, top_k=0, top_p=1.0, seed=0, command=None):
  """All four stages; returns the record also written to <workdir>/speedrun.json.

  record["interrupted"] is True when training stopped on a signal (then no eval and no story).
  """
  os.makedirs(workdir, exist_ok=True)
  dev = jax.devices()[0]
  rec = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "git_commit": _git_commit(), "command": command, "device": dev.device_kind,
         "n_devices": jax.device_count(), "workdir": os.path.abspath(workdir),
         "data_dir": os.path.abspath(config.data.dir), "stages": {}, "interrupted": False}

  def stage(name, fn):
    t0 = time.perf_counter()
    out, skipped = fn()
    s = time.perf_counter() - t0
    rec["stages"][name] = {"s": s, "skipped": skipped}
    print(f"[speedrun] {name}: {s:.1f}s{' (skipped: already done)' if skipped else ''}", flush=True)
    _write(workdir, rec)
    return out

  stage("data", lambda: (None, prepare_data(config, **(data_opts or {}))))

  def train_stage():
    if finished(workdir, config):
      return None, True
    return train.train(config, workdir), False
  summary = stage("train", train_stage)
  rec.update(training_figures(workdir, config))
  rec["target_val_loss"] = config.train.target_val_loss or None
  if summary:
    rec["stopped_by"], rec["compile_s"] = summary["stopped_by"], summary["compile_s"]
    if summary["stopped_by"] in ("SIGINT", "SIGTERM"):
      rec["interrupted"] = True
      _write(workdir, rec)
      return rec

  def eval_stage():
    params, ckpt_config = train.load_checkpoint(workdir)
    val_N = data.load_split(config.data.dir, "val")
    return (params, ckpt_config, *evaluate(params, ckpt_config, val_N, eval_tokens)), False
  params, ckpt_config, rec["val_loss"], rec["val_tokens"] = stage("eval", eval_stage)
  rec["prompt"], rec["seed"], rec["temperature"] = prompt, seed, temperature
  rec["story"] = stage("sample", lambda: (story(params, ckpt_config, prompt, max_new_tokens, temperature,
                                                top_k, top_p, seed), False))
  _write(workdir, rec)
  return rec


def _write(workdir, rec):
  path = os.path.join(workdir, "speedrun.json")
  with open(path + ".tmp", "w") as f:
    json.dump(rec, f, indent=2)
    f.write("\n")
  os.replace(path + ".tmp", path)


def _git_commit():
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return (head.stdout.strip() or "no-commit") + ("+dirty" if dirty.stdout.strip() else "")
  except OSError:
    return "unknown"


def print_summary(rec):
  print("\nstage    seconds  skipped")
  for name, st in rec["stages"].items():
    print(f"{name:<8} {st['s']:>7.1f}  {'yes' if st['skipped'] else 'no'}")
  print(f"{'total':<8} {sum(st['s'] for st in rec['stages'].values()):>7.1f}")
  tps = f"{rec['tokens_per_s'] / 1e3:,.1f}k tokens/s" if rec["tokens_per_s"] else "no training time"
  print(f"training: {rec['steps']} steps, {rec['tokens']:,} tokens, {rec['train_s']:.1f}s ({tps})")
  if rec["target_val_loss"]:
    hit = rec["target_reached"]
    print(f"target val loss {rec['target_val_loss']}: " + (
        f"reached at step {hit['step']} ({hit['tokens']:,} tokens, {hit['train_s']:.1f}s training)"
        if hit else "NOT reached"))
  if "val_loss" in rec:
    print(f"final val loss {rec['val_loss']:.4f} over {rec['val_tokens']:,} val tokens")
  print(f"wrote {os.path.join(rec['workdir'], 'speedrun.json')}", flush=True)


# ----------------------------------------------------------------------------- command line


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: speedrun.py takes only --flags")
  f = flags.FLAGS
  path = f["config"].config_filename
  if not path or not os.path.exists(path.split(":")[0]):
    raise UserError(f"--config={path} is not a file: pass one of configs/*.py, e.g. "
                    "--config=configs/tinystories_h100.py")
  for name in _SAMPLE_ONLY:
    if name in f and f[name].present:
      raise UserError(f"--{name} is a sample.py flag the speedrun does not use: drop it, and after the "
                      f"speedrun run python sample.py --workdir=WORKDIR --{name}=...")
  if f.temperature < 0 or not 0 < f.top_p <= 1 or f.top_k < 0 or _FINAL_EVAL_TOKENS.value < 0:
    raise UserError("need --temperature >= 0, 0 < --top_p <= 1, --top_k >= 0, --final_eval_tokens >= 0")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  name = os.path.splitext(os.path.basename(path.split(":")[0]))[0]
  workdir = f.workdir or os.path.join("runs", name)
  opts = {"base_url": _BASE_URL.value, "local_dir": _LOCAL_DIR.value, "train_file": _TRAIN_FILE.value,
          "val_file": _VAL_FILE.value, "num_workers": _NUM_WORKERS.value}
  config = train._CONFIG.value  # pylint: disable=protected-access  (train.py defines --config)
  try:
    rec = run(config, workdir, data_opts=opts, eval_tokens=_FINAL_EVAL_TOKENS.value,
              prompt=PROMPT if f.prompt is None else f.prompt, max_new_tokens=f.max_new_tokens,
              temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed,
              command=" ".join(["python speedrun.py"] + sys.argv[1:]))
  except KeyboardInterrupt:
    print("\ninterrupted: finished stages are kept; run the same command to continue", file=sys.stderr)
    sys.exit(130)
  if rec["interrupted"]:
    print_summary(rec)
    print(f"training stopped by {rec['stopped_by']} (checkpoint saved); run the same command to continue",
          file=sys.stderr)
    sys.exit(130)
  print(f"\n{rec['story']}\n")
  print_summary(rec)


if __name__ == "__main__":
  app.run(errors.cli(main), flags_parser=train._parse_flags)  # pylint: disable=protected-access
