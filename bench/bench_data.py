"""Time to encode N MB of TinyStories-like text with tokenizer.encode_file, and the projection to
the full TinyStoriesV2-GPT4 train split (issue 3's figure).

  python bench/bench_data.py --mb=1000 --workers=16 --tag=gpu16   # the issue's figure
  python bench/bench_data.py --mb=50 --workers=1,2 --tag=cpu2      # a small run on a laptop

The text is the bundled sample (assets/tinystories/train.txt) repeated to N MB, cut at a story
boundary; the tokenizer is a 10,000-token BPE trained on that sample (or --tokenizer=PATH).
Repetition means the tokenizer's per-word cache is warm sooner than on 2 GB of fresh stories;
TinyStories' small vocabulary makes the real file close to that regime, but it is an assumption.
Writes bench/results/data_encode_<tag>.json.
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

import data
import tokenizer

flags.DEFINE_float("mb", 1000, "Megabytes (1e6 bytes) of text to encode.")
flags.DEFINE_string("workers", str(os.cpu_count()), "Comma-separated worker counts to time.")
flags.DEFINE_string("tokenizer", None, "tokenizer.json to use (default: train one on the sample).")
flags.DEFINE_string("tag", None, "Result name suffix (default: <n>cpu).")
flags.DEFINE_string("tmp_dir", None, "Where the N MB text file goes (default: system temp).")
FLAGS = flags.FLAGS

# Approximate size of TinyStoriesV2-GPT4-train.txt (about 2.2 GB; not verified here, no network):
# only used for the projection, which scales linearly with it.
TINYSTORIES_TRAIN_BYTES = 2.2e9


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def _git_commit():
  try:
    r = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    return r.stdout.strip() if r.returncode == 0 else "uncommitted"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _make_text(path, n_bytes):
  """The sample repeated to about n_bytes, cut just after a story's <|endoftext|> line."""
  sample = open(os.path.join(data.SAMPLE_DIR, "train.txt"), "rb").read()
  written = 0
  with open(path, "wb") as f:
    while written < n_bytes:
      piece = sample[:n_bytes - written]
      if len(piece) < len(sample):
        end = piece.rfind(b"<|endoftext|>\n")
        if end < 0:
          break  # less than one story short of n_bytes
        piece = piece[:end + len(b"<|endoftext|>\n")]
      f.write(piece)
      written += len(piece)
  return written


def main(argv):
  del argv
  workers = [int(w) for w in FLAGS.workers.split(",")]
  tag = FLAGS.tag or f"{os.cpu_count()}cpu"
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory(dir=FLAGS.tmp_dir) as tmp:
    if FLAGS.tokenizer:
      tok = tokenizer.Tokenizer.load(FLAGS.tokenizer)
    else:
      vocab, merges = tokenizer.train_bpe(os.path.join(data.SAMPLE_DIR, "train.txt"), 10_000,
                                          data.SPECIAL_TOKENS, progress=False)
      tok = tokenizer.Tokenizer(vocab, merges, data.SPECIAL_TOKENS)
    text = os.path.join(tmp, "text.txt")
    n_bytes = _make_text(text, int(FLAGS.mb * 1e6))
    rows = []
    print(f"{'MB':>8} {'workers':>7} {'seconds':>8} {'MB/s':>7} {'Mtok/s':>7} "
          f"{'tokens':>13} {'full TinyStories train (s)':>27}")
    for w in workers:
      out = os.path.join(tmp, f"tokens_{w}.bin")
      t0 = time.perf_counter()
      n_tokens = tokenizer.encode_file(tok, text, out, num_workers=w, progress=False)
      dt = time.perf_counter() - t0
      os.remove(out)
      row = {"mb": n_bytes / 1e6, "workers": w, "seconds": dt, "mb_per_s": n_bytes / 1e6 / dt,
             "tokens": n_tokens, "tokens_per_s": n_tokens / dt,
             "seconds_per_gb": dt / (n_bytes / 1e9),
             "projected_tinystories_train_s": TINYSTORIES_TRAIN_BYTES / n_bytes * dt}
      rows.append(row)
      print(f"{row['mb']:8.1f} {w:7d} {dt:8.2f} {row['mb_per_s']:7.1f} "
            f"{row['tokens_per_s'] / 1e6:7.2f} {n_tokens:13,} "
            f"{row['projected_tinystories_train_s']:27.0f}")
  result = {
      "name": "data_encode", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "git_commit": _git_commit(), "command": " ".join(["python"] + sys.argv),
      "device": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version(),
                 # other jobs on the machine slow the figures down: keep the evidence with them
                 "load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0]},
      "setup": {"vocab_size": tok.vocab_size, "text": "assets/tinystories/train.txt repeated",
                "tinystories_train_bytes_assumed": TINYSTORIES_TRAIN_BYTES},
      "figures": rows}
  path = os.path.join(ROOT, "bench", "results", f"data_encode_{tag}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
