"""Tokenizer benchmark: our train_bpe and encode_file against tiktoken and HF tokenizers, same corpus.

  python bench/bench_tokenizer.py                  # 100 MB corpus, all cores
  python bench/bench_tokenizer.py --size_mb 20     # quick run (about 2 minutes on 2 cores)

The corpus is the bundled TinyStories sample, its stories shuffled and repeated up to --size_mb, written to
a temporary directory. Measured: train_bpe at --vocab_size with 1 and N worker processes; encode_file MB/s
with 1 and N workers; tiktoken given our merges as ranks (1 and N threads); HF tokenizers' BPE trainer with
1 and N threads. Prints a table and writes bench/results/tokenizer_<tag>.json.
"""
import argparse
import datetime
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tokenizer as tk  # noqa: E402

EOT = "<|endoftext|>"

# HF's trainer runs in a child process: rayon sizes its thread pool once per process, from
# RAYON_NUM_THREADS, so 1 and N threads need separate processes.
HF_SCRIPT = r"""
import json, sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
path, vocab_size, special = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=0)
t0 = time.perf_counter()
tok.train([path], trainer)
print(json.dumps({"seconds": time.perf_counter() - t0, "vocab_size": tok.get_vocab_size()}))
"""


def build_corpus(path, size_mb, seed=0):
  """Shuffled, repeated stories of assets/tinystories/train.txt, one <|endoftext|> line between them."""
  with open(os.path.join(ROOT, "assets", "tinystories", "train.txt"), encoding="utf-8") as f:
    stories = [s.strip("\n") for s in f.read().split(EOT) if s.strip()]
  rng = random.Random(seed)
  target, written = int(size_mb * 1e6), 0
  with open(path, "w", encoding="utf-8") as f:
    while written < target:
      rng.shuffle(stories)
      for s in stories:
        piece = s + "\n" + EOT + "\n"
        f.write(piece)
        written += len(piece.encode("utf-8"))
        if written >= target:
          break
  return os.path.getsize(path)


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def git_commit():
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
      return "uncommitted"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except OSError:
    return "unknown"


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def text_pieces(path, piece_bytes=1 << 20):
  """The corpus as ~1 MB strings cut after a story, the batch tiktoken encodes."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  pieces, start = [], 0
  while start < len(text):
    end = text.find(EOT, start + piece_bytes)
    end = len(text) if end < 0 else end
    pieces.append(text[start:end])
    start = end
  return pieces


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--size_mb", type=float, default=100.0, help="corpus size in MB (default 100)")
  ap.add_argument("--workers", type=int, default=os.cpu_count(), help="N for the parallel runs")
  ap.add_argument("--vocab_size", type=int, default=10_000)
  ap.add_argument("--tag", default=socket.gethostname(), help="results file: tokenizer_<tag>.json")
  ap.add_argument("--skip_hf", action="store_true", help="do not run HF tokenizers")
  args = ap.parse_args()
  n = args.workers
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    size = build_corpus(corpus, args.size_mb)
    mb = size / 1e6
    print(f"corpus: {mb:.1f} MB of shuffled TinyStories at {corpus}; {n} workers", flush=True)

    rows = []
    for w in sorted({1, n}):
      t, (vocab, merges) = timed(lambda: tk.train_bpe(corpus, args.vocab_size, [EOT], num_workers=w,
                                                      progress=True))
      results[f"train_bpe_s_{w}"] = t
      rows.append(("ours train_bpe", w, t, mb / t))
    tok = tk.Tokenizer(vocab, merges, [EOT])
    outs = {}
    for w in sorted({1, n}):
      out = os.path.join(tmp, f"tokens_{w}.bin")
      t, n_tokens = timed(lambda: tk.encode_file(tok, corpus, out, num_workers=w, progress=True))
      results[f"encode_mb_s_{w}"] = mb / t
      results["n_tokens"] = n_tokens
      rows.append(("ours encode_file", w, t, mb / t))
      with open(out, "rb") as f:
        outs[w] = f.read()
    assert len(set(outs.values())) == 1, "encode_file results differ between worker counts"

    import tiktoken
    ranks = {b: i for i, b in tok.vocab.items() if i != tok.token_id(EOT)}
    enc = tiktoken.Encoding("ours", pat_str=tk.GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={EOT: tok.token_id(EOT)})
    pieces = text_pieces(corpus)
    for w in sorted({1, n}):
      t, batches = timed(lambda: enc.encode_batch(pieces, num_threads=w, allowed_special="all"))
      results[f"tiktoken_encode_mb_s_{w}"] = mb / t
      rows.append(("tiktoken encode_batch", w, t, mb / t))
    tik_tokens = sum(len(b) for b in batches)
    results["tiktoken_n_tokens"] = tik_tokens

    if not args.skip_hf:
      for w in sorted({1, n}):
        env = dict(os.environ, RAYON_NUM_THREADS=str(w), TOKENIZERS_PARALLELISM="true")
        p = subprocess.run([sys.executable, "-c", HF_SCRIPT, corpus, str(args.vocab_size), EOT], env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
          sys.exit(f"HF tokenizers run failed:\n{p.stderr}")
        t = json.loads(p.stdout.strip().splitlines()[-1])["seconds"]
        results[f"hf_train_s_{w}"] = t
        rows.append(("HF tokenizers train", w, t, mb / t))

  print(f"\n{'what':24s} {'workers':>7s} {'seconds':>8s} {'MB/s':>8s} {'MB/s/core':>9s}")
  for name, w, t, rate in rows:
    print(f"{name:24s} {w:7d} {t:8.2f} {rate:8.1f} {rate / w:9.1f}")
  print(f"tokens: ours {results['n_tokens']:,}, tiktoken {tik_tokens:,} (same merges: must be equal)")

  per_core = min(results["encode_mb_s_1"], results[f"encode_mb_s_{n}"] / n)
  targets = {"encode_mb_s_per_core_min": per_core, "encode_target_met": per_core >= 3.0}
  if not args.skip_hf:
    ratio = results[f"train_bpe_s_{n}"] / results[f"hf_train_s_{n}"]
    targets.update({"train_vs_hf_ratio": ratio, "train_target_met": ratio <= 2.0})
  print(f"targets: encode >= 3 MB/s per core -> {per_core:.1f} ({'met' if per_core >= 3 else 'NOT met'})",
        end="")
  if not args.skip_hf:
    print(f"; train_bpe within 2x of HF on {n} cores -> {ratio:.2f}x "
          f"({'met' if ratio <= 2 else 'NOT met'})")
  else:
    print()

  record = {
      "benchmark": "tokenizer",
      "device": f"CPU: {cpu_model()}",
      "cpu_count": os.cpu_count(),
      "hostname": socket.gethostname(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "git_commit": git_commit(),
      "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
      "python": platform.python_version(),
      "corpus_mb": mb,
      "vocab_size": args.vocab_size,
      "workers": n,
      "figures": results,
      "targets": targets,
  }
  out_dir = os.path.join(ROOT, "bench", "results")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"tokenizer_{args.tag}.json")
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
