"""Writes the two notebooks from the cell sources below (no outputs): edit here, then run

  python notebooks/make_notebooks.py

so a change to a notebook is a readable diff of this file. tests/test_notebooks.py executes both.
"""
import os

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))

# Every notebook starts here: find the repo root (the kernel may start in notebooks/ or the root),
# import from it and run from it, so `python sample.py ...` and configs/ resolve.
SETUP = """\
import json, math, os, subprocess, sys, tempfile, time
ROOT = os.getcwd()
while not os.path.exists(os.path.join(ROOT, "train.py")):
  if os.path.dirname(ROOT) == ROOT:
    raise RuntimeError("run this notebook from inside the repository (train.py not found)")
  ROOT = os.path.dirname(ROOT)
os.chdir(ROOT)
sys.path.insert(0, ROOT)
import importlib.util
import numpy as np
import matplotlib.pyplot as plt
import data, train

def load_config(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()"""

SPEEDRUN = [
    ("md", """\
# TinyStories speedrun, end to end

download -> BPE tokenizer -> encode -> train -> plot -> generate, each stage timed.

* **On a CPU** (the default, `USE_FULL_TINYSTORIES = False`): the bundled 1M-token sample
  (assets/tinystories), a tiny model and a few steps. It runs in about a minute and shows the
  pipeline working; the loss it reaches says nothing about the speedrun.
* **On one H100 with internet**: set `USE_FULL_TINYSTORIES = True`, `NUM_STEPS = 5000`,
  `BATCH_SIZE = 128`. That is `configs/tinystories_h100.py`, which stops at the first eval at or
  below val loss 1.45 (docs/SPEEDRUN_BENCHMARK.md has the rules and the numbers).

Reruns skip finished stages (data.py records them in stages.json; train.py resumes its workdir)."""),
    ("code", """\
import tempfile
NUM_STEPS = 40        # H100 speedrun: 5000 (it stops earlier, at val loss 1.45)
BATCH_SIZE = 8        # H100 speedrun: 128
USE_FULL_TINYSTORIES = False  # True: download TinyStoriesV2-GPT4 (~2 GB) and use the H100 config
WORKDIR = tempfile.mkdtemp(prefix="speedrun_")  # a fixed path makes reruns resume
PROMPT = "Once upon a time"
"""),
    ("code", SETUP),
    ("md", """\
## 1. Download
`data.fetch_tinystories` downloads the two TinyStoriesV2-GPT4 files with resume, retries and a
sha256 check, and skips files already present and verified. On the CPU path the bundled sample
stands in for it."""),
    ("code", """\
t0 = time.time()
if USE_FULL_TINYSTORIES:
  DATASET, DATA_DIR = "tinystories", os.path.join(ROOT, "data", "tinystories")
  text_files = data.fetch_tinystories(DATA_DIR)
else:
  DATASET, DATA_DIR = "tinystories_sample", os.path.join(WORKDIR, "data")
  text_files = {"train": os.path.join(data.SAMPLE_DIR, "train.txt"),
                "val": os.path.join(data.SAMPLE_DIR, "valid.txt")}
for split, path in text_files.items():
  print(f"{split}: {path} ({os.path.getsize(path) / 1e6:,.1f} MB)")
print(f"download stage: {time.time() - t0:.1f}s")"""),
    ("md", """\
## 2. BPE tokenizer and encoding
`data.prepare` trains the 10,000-token byte-level BPE (with `<|endoftext|>`) on the train text, then
encodes both splits to flat uint16 token files. The download it would start is already done above."""),
    ("code", """\
t0 = time.time()
data.prepare(DATASET, DATA_DIR, progress=False)
meta = data.read_meta(DATA_DIR)
VOCAB_SIZE = meta["vocab_size"]
tok = data.load_tokenizer(DATA_DIR)
ids = tok.encode(PROMPT)
print(f"vocab {VOCAB_SIZE:,}; train {meta['splits']['train']['n_tokens']:,} tokens, "
      f"val {meta['splits']['val']['n_tokens']:,} tokens")
print(f"{PROMPT!r} -> {ids} -> {tok.decode(ids)!r}")
print(f"tokenizer + encode stage: {time.time() - t0:.1f}s")"""),
    ("md", """\
## 3. Train
The H100 config as it is, or `configs/tiny.py` shrunk to a one-minute CPU run (context 128, an
8k-token eval). An untrained model scores about ln(vocab) = 9.21 nats/token."""),
    ("code", """\
if USE_FULL_TINYSTORIES:
  config = load_config("configs/tinystories_h100.py")
else:
  config = load_config("configs/tiny.py")
  config.model.context_length = 128
  config.train.update(warmup_steps=5, log_every=10, eval_every=20, eval_tokens=8192)
config.data.dir = DATA_DIR
config.train.update(steps=NUM_STEPS, batch_size=BATCH_SIZE, ckpt_every=NUM_STEPS)
RUN_DIR = os.path.join(WORKDIR, "run")
summary = train.train(config, RUN_DIR)
FINAL_VAL_LOSS = summary["final_val_loss"]
print(f"final val loss {FINAL_VAL_LOSS:.4f} (untrained: ln({VOCAB_SIZE}) = {math.log(VOCAB_SIZE):.2f}); "
      f"training {summary['train_s']:.1f}s, compile {summary['compile_s']:.1f}s")"""),
    ("md", "## 4. Plot\nThe loss curves from the run's metrics.jsonl (train.py also saves them as loss.png)."),
    ("code", """\
with open(os.path.join(RUN_DIR, "metrics.jsonl")) as f:
  events = [json.loads(line) for line in f]
tr = [e for e in events if e["event"] == "train"]
ev = [e for e in events if e["event"] == "eval"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([e["tokens"] for e in tr], [e["loss"] for e in tr], label="train")
ax.plot([e["tokens"] for e in ev], [e["val_loss"] for e in ev], "o-", label="val")
if USE_FULL_TINYSTORIES:
  ax.axhline(1.45, color="gray", ls="--", label="target 1.45")
ax.set_xlabel("tokens seen"); ax.set_ylabel("loss (nats/token)"); ax.legend()
plt.show()"""),
    ("md", """\
## 5. Generate
sample.py loads the latest checkpoint and its tokenizer and decodes with a KV cache; this is the
command you would type in a shell."""),
    ("code", """\
t0 = time.time()
out = subprocess.run([sys.executable, "sample.py", f"--workdir={RUN_DIR}", f"--prompt={PROMPT}",
                      "--max_new_tokens=60", "--temperature=0.8", "--seed=0"],
                     capture_output=True, text=True, check=True)
print(out.stdout)
print(out.stderr.strip().splitlines()[-1])
print(f"generate stage: {time.time() - t0:.1f}s")"""),
]

DEMO = [
    ("md", """\
# Demo: tokenizer, training, sweeps, optimizers, and three decode paths

Tokenizer experiments, a tiny model, a learning-rate and a batch-size sweep, AdamW vs Muon, then
generation through the standard, MLA and DSA decode paths (and without a cache). Everything runs
on a CPU in about two minutes, on the bundled TinyStories sample with tiny models: the numbers
show how to use the code, not what a full-size run reaches."""),
    ("code", """\
import tempfile
STEPS = 24          # steps of every run at BATCH_SIZE (the batch sweep keeps its tokens fixed)
LR = 3e-3           # peak learning rate of the main model, the batch sweep and the Muon run
BATCH_SIZE = 8
SWEEP_LRS = [3e-4, 3e-3, 3e-2]
SWEEP_BATCHES = [8, 16, 32]  # each divides STEPS * BATCH_SIZE
CONTEXT = 64
WORKDIR = tempfile.mkdtemp(prefix="demo_")
PROMPT = "Once upon a time, there was a little"
"""),
    ("code", SETUP + "\nimport decode, sample, tokenizer"),
    ("md", """\
## 1. Tokenizer experiments
Train byte-level BPEs of a few sizes on the first 500 kB of the bundled train text and compare how
well each compresses the validation text (bytes per token: higher = fewer tokens per story)."""),
    ("code", """\
src = os.path.join(data.SAMPLE_DIR, "train.txt")
small = os.path.join(WORKDIR, "train_500k.txt")
with open(src, "rb") as f_in, open(small, "wb") as f_out:
  f_out.write(f_in.read(500_000).decode("utf-8", "ignore").encode("utf-8"))
val_text = open(os.path.join(data.SAMPLE_DIR, "valid.txt"), encoding="utf-8").read()
toks = {}
for V in (300, 1000, 4000):
  t0 = time.time()
  vocab, merges = tokenizer.train_bpe(small, V, ["<|endoftext|>"], num_workers=1, progress=False)
  toks[V] = tokenizer.Tokenizer(vocab, merges, ["<|endoftext|>"])
  n = len(toks[V].encode(val_text))
  print(f"vocab {V:5d}: {len(val_text.encode()) / n:.2f} bytes/token on valid.txt "
        f"(trained in {time.time() - t0:.1f}s); first merges {[a + b for a, b in merges[:4]]}")"""),
    ("code", """\
tok = toks[4000]
text = "Lily saw a big dog.<|endoftext|>Tom smiled."
ids = tok.encode(text)
print([tok.decode([i]) for i in ids])
assert tok.decode(ids) == text   # lossless, and the special token is one id
print("<|endoftext|> ->", tok.token_id("<|endoftext|>"))"""),
    ("md", """\
## 2. Train a tiny model
The speedrun's data preparation (10k BPE on the whole sample, both splits encoded), then
`configs/tiny.py` at context 64 for a few steps."""),
    ("code", """\
DATA_DIR = data.prepare("tinystories_sample", os.path.join(WORKDIR, "data"), progress=False)
VOCAB_SIZE = data.read_meta(DATA_DIR)["vocab_size"]

def tiny_config(steps, lr, batch_size=BATCH_SIZE, optimizer="adamw"):
  c = load_config("configs/tiny.py")
  c.data.dir = DATA_DIR
  c.model.context_length = CONTEXT
  # warmup is 1/8 of the run, so runs of equal tokens but different batch warm up over equal tokens
  c.train.update(steps=steps, lr=lr, min_lr=lr / 10, batch_size=batch_size, optimizer=optimizer,
                 warmup_steps=max(1, steps // 8), log_every=4, eval_every=steps, eval_tokens=8192,
                 ckpt_every=steps)
  return c

RUN_DIR = os.path.join(WORKDIR, "main")
summary = train.train(tiny_config(STEPS, LR), RUN_DIR)
FINAL_VAL_LOSS = summary["final_val_loss"]
print(f"val loss {FINAL_VAL_LOSS:.4f} after {summary['tokens']:,} tokens "
      f"(untrained: ln({VOCAB_SIZE}) = {math.log(VOCAB_SIZE):.2f})")"""),
    ("md", """\
## 3. Learning-rate sweep
Same model, data and steps; only the peak learning rate changes (the main model is the `LR`
point, so it is not trained twice). With this few steps the curve is noisy: a real sweep uses more
steps and a few seeds."""),
    ("code", """\
sweep = {}
for lr in SWEEP_LRS:
  if lr == LR:  # the main model above is this run
    sweep[lr] = FINAL_VAL_LOSS
    continue
  s = train.train(tiny_config(STEPS, lr), os.path.join(WORKDIR, f"lr_{lr:g}"))
  sweep[lr] = s["final_val_loss"]
for lr, loss in sweep.items():
  print(f"lr {lr:g}: val loss {loss:.4f}")
plt.figure(figsize=(5, 3))
plt.semilogx(list(sweep), list(sweep.values()), "o-")
plt.xlabel("peak lr"); plt.ylabel(f"val loss after {STEPS} steps")
plt.show()"""),
    ("md", """\
## 4. Batch-size sweep at an equal token budget
Every run sees `STEPS x BATCH_SIZE` sequences (with the defaults: batch 8 for 24 steps, the main
model; 16 for 12; 32 for 6), at the same peak lr. What it shows: at a budget this small the larger
batch usually loses, because it takes fewer optimizer steps for the same tokens and sits far above
the *critical batch size* (beyond it, doubling the batch no longer halves the steps needed). That
size grows as the loss falls, so longer runs (the H100 speedrun uses batch 128) afford larger
batches.

Its limits: ~12k tokens, one seed, a val loss still far from converged, so the gaps are noisy; and
one lr for all batches is unfair to the large ones (they usually want a larger lr, so a real sweep
tunes lr per batch size)."""),
    ("code", """\
budget = STEPS * BATCH_SIZE * CONTEXT
bs_sweep = {BATCH_SIZE: summary}  # the main model above is the BATCH_SIZE run
for B in SWEEP_BATCHES:
  if B not in bs_sweep:
    bs_sweep[B] = train.train(tiny_config(STEPS * BATCH_SIZE // B, LR, batch_size=B),
                              os.path.join(WORKDIR, f"batch_{B}"))
bs_sweep = {B: bs_sweep[B] for B in sorted(bs_sweep)}
for B, s in bs_sweep.items():
  print(f"batch {B:3d} x {s['steps']:3d} steps ({s['tokens']:,} tokens): "
        f"val loss {s['final_val_loss']:.4f}")
  assert s["tokens"] == budget, (B, s["tokens"], budget)  # equal tokens: only the batch changed
plt.figure(figsize=(5, 3))
plt.semilogx(list(bs_sweep), [s["final_val_loss"] for s in bs_sweep.values()], "o-", base=2)
plt.xlabel("batch size (sequences)"); plt.ylabel(f"val loss after {budget:,} tokens")
plt.show()"""),
    ("md", """\
## 5. AdamW vs Muon
The main model again with `config.train.optimizer = "muon"` (muon.py; docs/train.md, section
Muon): orthogonalised momentum on the hidden weight matrices, AdamW on the embedding and the
norm gains. Muon's update is scaled to AdamW's RMS, so the same lr and schedule carry over. Same
seed, data and tokens; the curves are the train losses logged in each run's metrics.jsonl, the
markers the final val loss. One seed at this size is a hint, not a result."""),
    ("code", """\
MUON_DIR = os.path.join(WORKDIR, "muon")
muon_summary = train.train(tiny_config(STEPS, LR, optimizer="muon"), MUON_DIR)
assert muon_summary["tokens"] == summary["tokens"]
plt.figure(figsize=(6, 3.5))
for name, run_dir in [("AdamW", RUN_DIR), ("Muon", MUON_DIR)]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    events = [json.loads(line) for line in f]
  tr = [e for e in events if e["event"] == "train"]
  ev = [e for e in events if e["event"] == "eval"]
  line, = plt.plot([e["tokens"] for e in tr], [e["loss"] for e in tr], label=f"{name} train")
  plt.plot([e["tokens"] for e in ev], [e["val_loss"] for e in ev], "o", color=line.get_color(),
           label=f"{name} val")
  print(f"{name:5s}: final train loss {tr[-1]['loss']:.4f}, val loss {ev[-1]['val_loss']:.4f} "
        f"after {ev[-1]['tokens']:,} tokens")
plt.xlabel("tokens seen"); plt.ylabel("loss (nats/token)"); plt.legend()
plt.show()"""),
    ("md", """\
## 6. Generation: standard KV cache, MLA latent cache, DSA top-k
The same checkpoint through three decode paths (docs/generation.md):
* standard: the full K/V cache;
* MLA: `--use_mla --mla_rank=32` converts K/V by SVD into a 32-wide latent cache (D = 128);
* DSA: `--sparse_top_k=16`: each query attends only to its 16 best keys.

For each: the val loss through that path (the quality cost) and a sampled continuation (same
seed for all three). The model has seen only ~12k tokens, so expect word salad."""),
    ("code", """\
params0, config = train.load_checkpoint(RUN_DIR)
T = config.model.context_length
val_N = data.load_split(DATA_DIR, "val")
windows, weight = train.eval_windows(val_N, T, 4096, 8)
windows = np.asarray(windows).reshape(-1, T + 1)[np.asarray(weight).reshape(-1) > 0]
tok = sample.load_tokenizer(config)
eos = tok.token_id("<|endoftext|>")
prompt_ids = [[eos] + tok.encode(PROMPT)]
for name, use_mla, rank, top_k in [("standard", False, 0, 0), ("MLA r=32", True, 32, 0),
                                   ("DSA top-16", False, 0, 16)]:
  params, kind = decode.prepare(params0, config.model, use_mla, rank)
  loss = decode.val_loss(params, config.model, kind, windows, 8, top_k)
  gen = sample.Generator(params, config.model, kind, temperature=0.8, sparse_top_k=top_k, eos_id=eos)
  outs, seconds, steps = gen.generate(prompt_ids, 24, seed=0)
  print(f"{name:11s} kind={kind:7s} val loss {loss:.4f} | {PROMPT}{tok.decode(outs[0])!r}")"""),
    ("md", """\
Without a cache: `sample.RecomputeGenerator` reruns `model.forward` over the whole sequence for
every new token (O(T) more work per token; it is how a full-sequence kernel such as the
forward-only CUDA one generates, `python sample.py --attention=cuda`). Greedy decoding is
deterministic, so it must give exactly the tokens of the KV-cache path; the assert checks it."""),
    ("code", """\
cached, _, _ = sample.Generator(params0, config.model, "mha", eos_id=eos).generate(prompt_ids, 24)
fresh, _, _ = sample.RecomputeGenerator(params0, config.model, "xla", eos_id=eos).generate(
    prompt_ids, 24)
print(f"greedy, KV cache  | {PROMPT}{tok.decode(cached[0])!r}")
print(f"greedy, no cache  | {PROMPT}{tok.decode(fresh[0])!r}")
assert fresh == cached, (fresh, cached)
print(f"no-cache greedy output equals the cached one ({len(fresh[0])} tokens)")"""),
    ("md", """\
The same paths from a shell (here the MLA one):"""),
    ("code", """\
out = subprocess.run([sys.executable, "sample.py", f"--workdir={RUN_DIR}", f"--prompt={PROMPT}",
                      "--use_mla", "--mla_rank=32", "--max_new_tokens=20", "--temperature=0"],
                     capture_output=True, text=True, check=True)
print(out.stdout)"""),
]


def build(name, cells):
  nb = v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.metadata["language_info"] = {"name": "python"}
  nb.cells = [v4.new_markdown_cell(src) if kind == "md" else v4.new_code_cell(src)
              for kind, src in cells]
  for i, cell in enumerate(nb.cells):
    cell.id = f"{name}-{i}"  # fixed ids: regenerating gives the same file, not random churn
  return nb


def main():
  for name, cells in (("speedrun_tinystories", SPEEDRUN), ("demo_train_generate", DEMO)):
    path = os.path.join(HERE, f"{name}.ipynb")
    nb = build(name, cells)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print("wrote", path)


if __name__ == "__main__":
  main()
