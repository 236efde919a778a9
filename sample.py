"""Generates text from a train.py checkpoint: one prefill call, then a jitted decode loop on a cache.

  python sample.py --workdir=/tmp/gen_tiny --prompt="Once upon a time"
  python sample.py --workdir=/tmp/gen_tiny --prompt_file=prompts.txt --temperature=0.8 --top_p=0.9
  python sample.py --workdir=/tmp/gen_tiny --use_mla --mla_rank=64      # MHA checkpoint, SVD latent cache
  python sample.py --workdir=/tmp/gen_tiny --sparse_top_k=32 --train_indexer_steps=200   # DSA
  python sample.py --workdir=/tmp/gen_tiny --eval_tokens=32768 --sparse_top_k=32          # val loss instead
  python sample.py --workdir=/tmp/gen_tiny --attention=cuda --temperature=0   # no cache: a kernel end to end

Each prompt is preceded by <|endoftext|> (how documents start in the training data) and generation
stops at the next one. Text streams to stdout for a single prompt; the throughput goes to stderr.
docs/generation.md explains the cache kinds, the padding and the measurements.
"""
import functools
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import data
import decode
import errors
import model
import tokenizer as tokenizer_lib
import train
from errors import UserError

# --workdir is train.py's flag (defined when train is imported for load_checkpoint): here it names
# the run whose latest checkpoint is loaded.
_WORKDIR = train._WORKDIR  # pylint: disable=protected-access
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt text (or use --prompt_file).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A file with one prompt per line, generated as a batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt (at most).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy (deterministic).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample only among the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set with this probability (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_USE_MLA = flags.DEFINE_bool("use_mla", False, "MHA checkpoints: convert to a latent (MLA) cache by SVD.")
_MLA_RANK = flags.DEFINE_integer("mla_rank", 0, "Latent width for --use_mla (0 = d_model, exact).")
_SPARSE_TOP_K = flags.DEFINE_integer("sparse_top_k", 0, "DSA: each query attends to its top-k keys (0 = dense).")
_INDEXER_STEPS = flags.DEFINE_integer("train_indexer_steps", 0,
                                      "DSA: distil a lightning indexer for this many steps first "
                                      "(0 = select by exact attention scores).")
_ATTENTION = flags.DEFINE_enum(
    "attention", None, list(model.BACKENDS),
    "Generate without a KV cache: every new token recomputes the whole sequence with model.forward "
    "on this attention backend (slow; it runs a full-sequence kernel such as the forward-only 'cuda' "
    "one end to end). Default: the KV-cache path.")
_EVAL_TOKENS = flags.DEFINE_integer("eval_tokens", 0, "Instead of generating, print the val loss of the "
                                    "chosen inference path over this many val tokens.")

CHUNK = 16  # decode steps per jitted call: the host prints between calls (streaming)


# ----------------------------------------------------------------------------- sampling


def sample_logits(logits_BV, key, temperature, top_k, top_p):
  """Next tokens B from fp32 logits: greedy at temperature 0, else top-k / top-p filtered sampling."""
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)
  if top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    # Keep tokens whose preceding mass is < top_p (the most likely token always survives).
    n_keep_B1 = jnp.sum(cum_BV - jax.nn.softmax(sorted_BV, axis=-1) < top_p, axis=-1, keepdims=True)
    cut_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
    logits_BV = jnp.where(logits_BV >= cut_B1, logits_BV, -jnp.inf)
  return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def bucket(n, limit):
  """Prompt lengths are padded to 16, 32, 64, ... (at most limit): a few prefill compilations."""
  b = 16
  while b < n:
    b *= 2
  return min(b, limit)


# ----------------------------------------------------------------------------- generation


class Generator:
  """Jitted prefill (one per prompt-length bucket) and decode chunk (one) for a model and kind."""

  def __init__(self, params, cfg, kind, temperature=0.0, top_k=0, top_p=1.0, sparse_top_k=0,
               indexer=None, eos_id=None):
    self.params, self.cfg, self.kind, self.indexer = params, cfg, kind, indexer
    ext = functools.partial(decode.extend, cfg=cfg, kind=kind, top_k=sparse_top_k, indexer=indexer)
    pick = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    eos = -1 if eos_id is None else eos_id

    def prefill(params, cache, tokens_BT, pad_B, key):
      logits, cache = ext(params, cache=cache, tokens_BT=tokens_BT, start=0, pad_B=pad_B)
      return pick(logits[:, -1], key), cache

    def chunk(params, cache, tok_B, slot, pad_B, done_B, key, n):
      """Feeds tok_B at slot, slot+1, ... for up to n steps (stops early once every row hit EOS)."""
      B = tok_B.shape[0]

      def body(st):
        i, cache, tok_B, done_B, key, out_BN = st
        key, sub = jax.random.split(key)
        logits, cache = ext(params, cache=cache, tokens_BT=tok_B[:, None], start=slot + i, pad_B=pad_B)
        nxt_B = jnp.where(done_B, eos, pick(logits[:, 0], sub))
        return i + 1, cache, nxt_B, done_B | (nxt_B == eos), key, out_BN.at[:, i].set(nxt_B)

      st = (jnp.int32(0), cache, tok_B, done_B, key, jnp.full((B, CHUNK), eos, jnp.int32))
      i, cache, tok_B, done_B, key, out_BN = jax.lax.while_loop(
          lambda st: (st[0] < n) & ~jnp.all(st[3]), body, st)
      return cache, tok_B, done_B, key, out_BN, i

    self._prefill = jax.jit(prefill, donate_argnums=1)
    self._chunk = jax.jit(chunk, donate_argnums=1)
    self.eos = eos
    self._compiled = {}

  def generate(self, prompts, max_new_tokens, seed=0, on_chunk=None):
    """prompts: lists of token ids -> (generated ids per prompt without the EOS, decode seconds,
    decode steps after prefill: each step makes B tokens)."""
    S = self.cfg.context_length
    longest = max(len(p) for p in prompts)
    if longest >= S:
      raise UserError(f"a prompt has {longest} tokens but the model's context is {S}; shorten it to "
                      f"fewer than {S} tokens")
    Tp = bucket(longest, S - 1)
    max_new = min(max_new_tokens, S - Tp + 1)   # the last token generated needs no slot
    B = len(prompts)
    pad_B = np.array([Tp - len(p) for p in prompts], np.int32)
    tokens_BT = np.zeros((B, Tp), np.int32)
    for b, p in enumerate(prompts):
      tokens_BT[b, pad_B[b]:] = p                  # left padding: every row's next slot is Tp
    cache = decode.init_cache(self.params, self.cfg, self.kind, B, S, self.indexer)
    key, sub = jax.random.split(jax.random.key(seed))
    tok_B, cache = self._prefill(self.params, cache, jnp.asarray(tokens_BT), jnp.asarray(pad_B), sub)
    tok_np = np.asarray(tok_B)
    outs = [[int(t)] for t in tok_np]
    done_B = tok_np == self.eos
    slot = Tp
    if on_chunk:
      on_chunk(outs)
    args = (self.params, cache, tok_B, jnp.int32(slot), jnp.asarray(pad_B), jnp.asarray(done_B), key,
            jnp.int32(CHUNK))
    if B not in self._compiled:   # compiled before the clock starts: tokens/s is decoding only
      self._compiled[B] = self._chunk.lower(*args).compile()
    t0 = time.perf_counter()
    while len(outs[0]) < max_new and not done_B.all():
      n = min(CHUNK, max_new - len(outs[0]))
      cache, tok_B, done, key, out_BN, i = self._compiled[B](
          self.params, cache, tok_B, jnp.int32(slot), jnp.asarray(pad_B), jnp.asarray(done_B), key, jnp.int32(n))
      out_BN, i = np.asarray(out_BN), int(i)
      for b in range(B):
        outs[b].extend(int(t) for t in out_BN[b, :i])
      done_B, slot = np.asarray(done), slot + i
      if on_chunk:
        on_chunk(outs)
    seconds = time.perf_counter() - t0
    return [o[:o.index(self.eos)] if self.eos in o else o for o in outs], seconds, slot - Tp


class RecomputeGenerator:
  """Generation without a cache: each step runs model.forward over the whole sequence.

  The full-sequence attention kernels (the forward-only CUDA one in particular) take q, k and v of
  one length, so they cannot attend from one new token to a cache; recomputing the sequence lets
  them generate, at O(T) times the cost per token. Rows are right-padded to the context length, so
  one compilation serves every step; causality keeps the padding invisible to the real positions.
  Same interface as Generator. Greedy output equals Generator's; sampled output uses other draws.
  """

  def __init__(self, params, cfg, backend, temperature=0.0, top_k=0, top_p=1.0, eos_id=None):
    cfg = cfg.copy_and_resolve_references()
    cfg.attention_backend = backend
    if jax.default_backend() != "gpu" and "norm_backend" in cfg:
      # A checkpoint trained on the GPU may carry the Triton add+norm kernel; XLA computes the same.
      cfg.norm_backend = "xla"
    if (cfg.get("mlp_fp8") or cfg.get("attn_fp8") or cfg.get("head_fp8")) and model.gpu_without_fp8():
      # An H100-trained checkpoint on an older GPU: the bf16 dots compute the same model (decode.py's).
      cfg.mlp_fp8 = False
      for name in ("attn_fp8", "head_fp8"):
        if name in cfg:
          cfg[name] = False
    self.params, self.cfg = params, cfg
    self.eos = -1 if eos_id is None else eos_id
    pick = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)

    def step(params, tokens_BS, len_B, key):
      logits_BSV = model.forward(params, tokens_BS, cfg)
      last_BV = jnp.take_along_axis(logits_BSV, (len_B - 1)[:, None, None], axis=1)[:, 0]
      return pick(last_BV, key)

    self._step = jax.jit(step)

  def generate(self, prompts, max_new_tokens, seed=0, on_chunk=None):
    S = self.cfg.context_length
    longest = max(len(p) for p in prompts)
    if longest >= S:
      raise UserError(f"a prompt has {longest} tokens but the model's context is {S}; shorten it to "
                      f"fewer than {S} tokens")
    max_new = min(max_new_tokens, S - longest + 1)   # the last token generated needs no slot
    B = len(prompts)
    tokens_BS = np.zeros((B, S), np.int32)
    len_B = np.array([len(p) for p in prompts], np.int32)
    for b, p in enumerate(prompts):
      tokens_BS[b, :len(p)] = p
    outs, done_B = [[] for _ in prompts], np.zeros(B, bool)
    key = jax.random.key(seed)
    step = self._step.lower(self.params, tokens_BS, len_B, key).compile()   # before the clock starts
    t0, steps = time.perf_counter(), 0
    while steps < max_new and not done_B.all():
      key, sub = jax.random.split(key)
      nxt_B = np.asarray(step(self.params, tokens_BS, len_B, sub))
      for b in np.flatnonzero(~done_B):
        outs[b].append(int(nxt_B[b]))
        done_B[b] = nxt_B[b] == self.eos
        if len_B[b] < S:
          tokens_BS[b, len_B[b]] = nxt_B[b]
          len_B[b] += 1
      steps += 1
      if on_chunk and steps % CHUNK == 0:
        on_chunk(outs)
    seconds = time.perf_counter() - t0
    if on_chunk:
      on_chunk(outs)
    return [o[:o.index(self.eos)] if self.eos in o else o for o in outs], seconds, max(steps - 1, 0)


# ----------------------------------------------------------------------------- CLI


def load_tokenizer(config):
  path, sha = config.data.get("tokenizer_path", ""), config.data.get("tokenizer_sha256", "")
  if not path or not os.path.exists(path):
    raise UserError(f"the checkpoint's tokenizer {path or '(none recorded)'} does not exist; prepare the "
                    f"data again (python data.py ... --out_dir={config.data.dir}) or copy its tokenizer.json there")
  if sha and data.file_sha256(path) != sha:
    raise UserError(f"{path} has changed since training (sha256 differs from the checkpoint's); restore the "
                    "tokenizer the model was trained with (re-prepare the data with the same settings)")
  tok = tokenizer_lib.Tokenizer.load(path)
  if tok.vocab_size != config.model.vocab_size:
    raise UserError(f"{path} has {tok.vocab_size} tokens but the model has vocab_size "
                    f"{config.model.vocab_size}; use the tokenizer of the data the model was trained on")
  return tok


def read_prompts():
  if (_PROMPT.value is None) == (_PROMPT_FILE.value is None) and not _EVAL_TOKENS.value:
    raise UserError("give exactly one of --prompt=TEXT or --prompt_file=FILE")
  if _PROMPT_FILE.value is not None:
    if not os.path.exists(_PROMPT_FILE.value):
      raise UserError(f"--prompt_file={_PROMPT_FILE.value} does not exist; pass a text file, one prompt a line")
    with open(_PROMPT_FILE.value, encoding="utf-8") as f:
      prompts = [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
      raise UserError(f"--prompt_file={_PROMPT_FILE.value} holds no prompt; write one prompt per line")
    return prompts
  return [_PROMPT.value or ""]


def load_model(workdir, use_mla, mla_rank):
  if not workdir or not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is not a directory; pass the --workdir train.py wrote")
  params, config = train.load_checkpoint(workdir)
  if use_mla and config.model.attention == "mla":
    print("note: the checkpoint is native MLA; it already decodes from the latent cache", file=sys.stderr)
  if mla_rank and not use_mla:
    raise UserError("--mla_rank needs --use_mla (it sets the latent width of the converted cache)")
  params, kind = decode.prepare(params, config.model, use_mla, mla_rank)
  return params, config, kind


def _indexer(params, config, kind):
  if not _INDEXER_STEPS.value:
    return None
  if not _SPARSE_TOP_K.value:
    raise UserError("--train_indexer_steps needs --sparse_top_k (the indexer only selects keys for DSA)")
  train_N = data.load_split(config.data.dir, "train")
  return decode.train_indexer(params, config.model, kind, train_N, _INDEXER_STEPS.value,
                              log=lambda m: print(m, file=sys.stderr, flush=True))


def main(argv):
  logging.set_verbosity(logging.WARNING)   # Orbax logs every restore at INFO
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; flags are --name=value")
  if _TEMPERATURE.value < 0 or not 0 < _TOP_P.value <= 1 or _TOP_K.value < 0 or _SPARSE_TOP_K.value < 0:
    raise UserError("need --temperature >= 0, 0 < --top_p <= 1, --top_k >= 0, --sparse_top_k >= 0")
  if _ATTENTION.value and (_USE_MLA.value or _SPARSE_TOP_K.value or _EVAL_TOKENS.value):
    raise UserError("--attention (no-cache generation) runs the model as trained; drop --use_mla, "
                    "--sparse_top_k and --eval_tokens, which belong to the KV-cache path")
  prompts = read_prompts()
  params, config, kind = load_model(_WORKDIR.value, _USE_MLA.value, _MLA_RANK.value)
  indexer = _indexer(params, config, kind)
  if _EVAL_TOKENS.value:
    T = config.model.context_length
    val_N = data.load_split(config.data.dir, "val")
    windows_NBT1, weight_NB = train.eval_windows(val_N, T, _EVAL_TOKENS.value, 8)
    windows = np.asarray(windows_NBT1).reshape(-1, T + 1)[np.asarray(weight_NB).reshape(-1) > 0]
    loss = decode.val_loss(params, config.model, kind, windows, 8, _SPARSE_TOP_K.value, indexer)
    print(f"val_loss {loss:.4f} ({len(windows) * T:,} tokens, kind={kind}, "
          f"sparse_top_k={_SPARSE_TOP_K.value}, indexer={'trained' if indexer else 'exact'})")
    return
  tok = load_tokenizer(config)
  eos = tok.token_id("<|endoftext|>")
  ids = [[eos] + tok.encode(p) for p in prompts]
  if _ATTENTION.value:
    gen = RecomputeGenerator(params, config.model, _ATTENTION.value, _TEMPERATURE.value, _TOP_K.value,
                             _TOP_P.value, eos)
    kind = f"no cache, attention={_ATTENTION.value}"
  else:
    gen = Generator(params, config.model, kind, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value,
                    _SPARSE_TOP_K.value, indexer, eos)
  shown = [""]

  def stream(outs):   # batch 1: print the new text; hold back a partial UTF-8 character
    o = outs[0][:outs[0].index(eos)] if eos in outs[0] else outs[0]
    text = tok.decode(o).rstrip("\ufffd")
    if text.startswith(shown[0]):
      sys.stdout.write(text[len(shown[0]):])
      sys.stdout.flush()
      shown[0] = text

  if len(prompts) == 1:
    sys.stdout.write(prompts[0])
  outs, seconds, steps = gen.generate(ids, _MAX_NEW.value, _SEED.value, stream if len(prompts) == 1 else None)
  if len(prompts) == 1:
    sys.stdout.write(tok.decode(outs[0])[len(shown[0]):] + "\n")
  else:
    for i, (p, o) in enumerate(zip(prompts, outs)):
      print(f"[{i}] {p}{tok.decode(o)}")
  n = steps * len(prompts)
  print(f"decode: {n} tokens in {seconds:.2f}s, {n / max(seconds, 1e-9):.1f} tokens/s "
        f"(after prefill and compilation; kind={kind}, batch {len(prompts)})", file=sys.stderr)


if __name__ == "__main__":
  app.run(errors.cli(main))
