"""Byte-level BPE: training, encoding/decoding, parallel file encoding. No JAX here.

Vocab ids: the special tokens first (in the order given), then the 256 single bytes, then one id per
merge in merge order. Ties between equally frequent pairs go to the lexicographically greater pair of
bytes (the CS336 rule), so training is deterministic. A merge whose result already is a token (two
different pairs spelling the same bytes) reuses that id, as HF tokenizers does, so byte strings stay
unique and the vocab can be handed to tiktoken as mergeable ranks.

Pre-tokenization is GPT-2's regex; text is first split on the special tokens (longest first), and no merge
crosses a special token or a pre-token boundary. Files are cut into chunks only at "safe" positions where
cutting cannot change the result (see `_safe_cut`), which is what lets training and encoding run in
parallel processes and `encode_iterable` stream.
"""
import collections
import contextlib
import heapq
import json
import math
import multiprocessing
import operator
import os
import sys
import time

import numpy as np
import regex

from errors import UserError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PAT = regex.compile(GPT2_PATTERN)
FORMAT = "byte-bpe-tokenizer"
VERSION = 1
_CHUNK_BYTES = 4 << 20  # work unit of the process pools: small enough to bound worker memory
_SPECIAL_SEARCH = 1 << 20  # how far past a nominal cut to look for a special token before giving up

# A cut before a space/newline that follows a printable non-space ASCII character never changes the
# pre-tokens: no GPT-2 pattern alternative continues past a non-space character into whitespace, and no
# alternative looks behind. (The only lookahead, `\s+(?!\S)`, cannot end at a non-space character.)
_WS_CUT_BYTES = regex.compile(rb"[\x21-\x7e](?=[\n ])")


# ---------------------------------------------------------------------------------------------------
# Where a text may be cut.


def _special_regex(specials):
  """Alternation of the specials, longest first, so that the longest special at a position wins."""
  if not specials:
    return None
  alts = sorted(specials, key=len, reverse=True)
  return regex.compile("|".join(regex.escape(s) for s in alts))


def _crosses_special(buf, c, specials):
  """True when an occurrence of a special token starts before c and ends after c in buf."""
  for s in specials:
    j = buf.find(s, max(0, c - len(s) + 1), c + len(s) - 1)
    if 0 <= j < c:
      return True
  return False


def _safe_cut(buf, c, specials):
  """Whether a candidate cut c (the start of a special token, or whitespace after a printable character,
  see _WS_CUT_BYTES) is safe: no special-token occurrence spans it. Then both sides get the same
  special-token matches (longest-first, left to right) and the same pre-tokens as the uncut text."""
  return not _crosses_special(buf, c, specials)


def _find_cut(f, pos, size, specials_b):
  """First safe cut at or after byte `pos` of the open file f: preferably the start of a special token
  (between documents); otherwise a whitespace cut. Returns size when there is none."""
  max_len = max((len(s) for s in specials_b), default=1)
  block = 1 << 16
  if specials_b:
    p = pos
    while p < min(size, pos + _SPECIAL_SEARCH):
      base = max(0, p - max_len)
      f.seek(base)
      buf = f.read(block + 2 * max_len)
      lo, hi = p - base, p - base + block
      starts = sorted({m for s in specials_b for m in _all_finds(buf, s, lo, hi)})
      for c in starts:
        if _safe_cut(buf, c, specials_b):
          return base + c
      p += block
  p = pos
  while p < size:
    base = max(0, p - max_len)
    f.seek(base)
    buf = f.read(block + 2 * max_len)
    lo = p - base
    for m in _WS_CUT_BYTES.finditer(buf, max(0, lo - 1), lo + block):
      c = m.end()
      if c >= lo and _safe_cut(buf, c, specials_b):
        return base + c
    p += block
  return size


def _all_finds(buf, s, lo, hi):
  """Start positions in [lo, hi) of every (possibly overlapping) occurrence of s in buf."""
  out = []
  j = buf.find(s, lo)
  while 0 <= j < hi:
    out.append(j)
    j = buf.find(s, j + 1)
  return out


def _chunk_bounds(path, specials, num_chunks):
  """Cuts the file into about num_chunks pieces at safe cuts; returns [(start, end), ...]."""
  size = _file_size(path)
  specials_b = [s.encode("utf-8") for s in specials]
  cuts = [0]
  with open(path, "rb") as f:
    for i in range(1, num_chunks):
      target = size * i // num_chunks
      if target <= cuts[-1]:
        continue
      c = _find_cut(f, target, size, specials_b)
      if cuts[-1] < c < size:
        cuts.append(c)
  cuts.append(size)
  return list(zip(cuts[:-1], cuts[1:]))


def _file_size(path):
  try:
    with open(path, "rb"):
      pass
    return os.path.getsize(path)
  except FileNotFoundError:
    raise UserError(f"input file {path!r} does not exist; check the path (or download/prepare it first)")
  except OSError as e:
    raise UserError(f"cannot read input file {path!r} ({e.strerror}); check the path and its permissions")


def _read_text(path, start, end):
  with open(path, "rb") as f:
    f.seek(start)
    data = f.read(end - start)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(
        f"{path!r} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {start + e.start} is "
        "invalid; convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`) and retry")


def _num_workers(num_workers):
  if num_workers is None:
    return os.cpu_count() or 1
  if int(num_workers) < 1:
    raise UserError(f"num_workers={num_workers} must be >= 1 (or None for all CPU cores)")
  return int(num_workers)


class _Progress:
  """A one-line progress report on stderr, at most a few updates a second."""

  def __init__(self, label, total, unit, enabled):
    self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
    self.t0 = self.last = time.time()

  def update(self, done, force=False):
    now = time.time()
    if not self.enabled or (now - self.last < 0.5 and not force):
      return
    self.last = now
    rate = done / max(now - self.t0, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else float("inf")
    if self.unit == "MB":
      msg = f"{done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB  {rate / 1e6:.1f} MB/s"
    else:
      msg = f"{done:,}/{self.total:,} {self.unit}  {rate:,.0f}/s"
    print(f"\r{self.label}: {msg}  ETA {eta:.0f}s   ", end="", file=sys.stderr, flush=True)

  def close(self, done):
    if self.enabled:
      self.update(done, force=True)
      print(f" done in {time.time() - self.t0:.1f}s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _workers_skip_main():
  """Starts workers without re-importing the caller's script in them.

  The workers run functions of this module only, but multiprocessing imports the parent's __main__
  file into each new process (for forkserver: into the server they fork from). When that script is
  train.py or speedrun.py, it pulls in JAX, Orbax and the model, seconds of start-up for nothing.
  Hiding __main__'s file while the pool starts makes them skip it.
  """
  main = sys.modules.get("__main__")
  if main is None:
    yield
    return
  saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
  main.__dict__.pop("__file__", None)
  main.__spec__ = None   # multiprocessing reads it; None (as for `python -c`) means "no main to import"
  try:
    yield
  finally:
    main.__dict__.update(saved)


def _imap_chunks(fn, tasks, workers, init=None, initargs=(), ordered=True):
  """Runs fn over tasks in `workers` processes (in-process for one worker), yielding results (in task
  order when ordered). At most 2 tasks per worker are in flight, so results never pile up in memory."""
  if workers == 1 or len(tasks) == 1:
    if init:
      init(*initargs)
    for t in tasks:
      yield fn(t)
    return
  # forkserver, not fork: the caller may hold threads (JAX does), and forking those can deadlock
  ctx = multiprocessing.get_context("forkserver")
  # The fork server imports this module (numpy, regex) once; each worker forked from it then starts
  # with it loaded. (Takes effect when the server starts: at this process's first pool.)
  ctx.set_forkserver_preload([__name__])
  with _workers_skip_main():
    pool = ctx.Pool(workers, initializer=init, initargs=initargs)
  with pool:
    pending = collections.deque()
    it = iter(tasks)
    for t in it:
      pending.append(pool.apply_async(fn, (t,)))
      if len(pending) >= 2 * workers:
        break
    while pending:
      if ordered:
        r = pending.popleft()
      else:  # take whichever finished first
        r = next((p for p in pending if p.ready()), None)
        if r is None:
          pending[0].wait(0.01)
          continue
        pending.remove(r)
      yield r.get()
      t = next(it, None)
      if t is not None:
        pending.append(pool.apply_async(fn, (t,)))


# ---------------------------------------------------------------------------------------------------
# Training.


def _count_chunk(task):
  """Pre-token counts of one chunk (runs in a worker; reads only its own bytes)."""
  path, start, end, specials = task
  text = _read_text(path, start, end)
  sre = _special_regex(specials)
  counts = collections.Counter()
  for seg in (sre.split(text) if sre else [text]):
    counts.update(_PAT.findall(seg))
  return counts, end - start


def _check_specials(special_tokens):
  specials = list(special_tokens or [])
  for s in specials:
    if not isinstance(s, str) or not s:
      raise UserError(f"special token {s!r} must be a non-empty string, e.g. '<|endoftext|>'")
  if len(set(specials)) != len(specials):
    raise UserError(f"special tokens {specials} contain duplicates; list each once")
  return specials


def train_bpe(input_path, vocab_size, special_tokens, num_workers=None, progress=True):
  """Trains a byte-level BPE on a UTF-8 text file. Returns (vocab: id -> bytes, merges: [(a, b), ...]).

  Pre-token counting runs in num_workers processes over chunks cut at special tokens; the merge loop
  updates pair counts incrementally (see _merge_loop)."""
  specials = _check_specials(special_tokens)
  n_base = len(specials) + 256
  try:
    vocab_size = operator.index(vocab_size)
  except TypeError:
    raise UserError(f"vocab_size={vocab_size!r} must be an integer, e.g. 10000")
  if vocab_size < n_base:
    raise UserError(f"vocab_size={vocab_size} is too small: it must be at least 256 bytes + "
                    f"{len(specials)} special tokens = {n_base}; pass a larger vocab_size")
  token_dtype(vocab_size)  # fail now, not after training, if the ids cannot be stored
  workers = _num_workers(num_workers)
  size = _file_size(input_path)
  bounds = _chunk_bounds(input_path, specials, max(math.ceil(size / _CHUNK_BYTES), 4 * workers))
  tasks = [(input_path, s, e, specials) for s, e in bounds]

  counts = collections.Counter()
  bar = _Progress("pre-tokenize", size, "MB", progress)
  done = 0
  for c, n in _imap_chunks(_count_chunk, tasks, workers, ordered=False):
    counts.update(c)
    done += n
    bar.update(done)
  bar.close(done)

  vocab = {i: s.encode("utf-8") for i, s in enumerate(specials)}
  vocab.update({len(specials) + b: bytes([b]) for b in range(256)})
  words, freqs = [], []
  for w, f in counts.items():
    words.append([len(specials) + b for b in w.encode("utf-8")])
    freqs.append(f)
  merges = _merge_loop(vocab, words, freqs, vocab_size, progress)
  return vocab, merges


def _desc_key(b):
  """Tuple that sorts in the reverse order of the bytes b, so a min-heap pops the greatest pair first.
  The 256 terminator puts a prefix after its extensions (b'a' < b'ab' means key(b'a') > key(b'ab'))."""
  return tuple(255 - x for x in b) + (256,)


def _merge_loop(vocab, words, freqs, vocab_size, progress):
  """Greedy BPE merges with incremental pair counts.

  A full recount costs O(corpus) per merge. Instead we keep the count of every adjacent pair, an index
  pair -> words holding it, and a heap of (-count, pair) entries. Merging a pair touches only the words in
  its index; their old pairs are subtracted and new pairs added, and each pair whose count changed is
  pushed again. Old heap entries are not removed: an entry is stale when its count differs from the
  current count, and is skipped when popped (lazy invalidation)."""
  id_of = {b: i for i, b in vocab.items()}
  key = {i: _desc_key(b) for i, b in vocab.items()}
  counts = collections.defaultdict(int)
  where = collections.defaultdict(set)
  for wi, (w, f) in enumerate(zip(words, freqs)):
    for p in zip(w, w[1:]):
      counts[p] += f
      where[p].add(wi)
  heap = [(-c, key[a], key[b], a, b) for (a, b), c in counts.items()]
  heapq.heapify(heap)

  merges = []
  target = vocab_size - len(vocab)
  bar = _Progress("merges", target, "merges", progress)
  while len(vocab) < vocab_size:
    while heap:
      negc, _, _, a, b = heap[0]
      if counts.get((a, b)) == -negc:
        break
      heapq.heappop(heap)  # stale
    if not heap:
      break  # every word is a single token: nothing left to merge
    heapq.heappop(heap)
    new = vocab[a] + vocab[b]
    merges.append((vocab[a], vocab[b]))
    c = id_of.get(new)
    if c is None:
      c = len(vocab)
      vocab[c] = new
      id_of[new] = c
      key[c] = _desc_key(new)
    del counts[(a, b)]
    delta = collections.defaultdict(int)
    for wi in where.pop((a, b)):
      w = words[wi]
      out, i, n = [], 0, len(w)
      while i < n:
        if w[i] == a and i + 1 < n and w[i + 1] == b:
          out.append(c)
          i += 2
        else:
          out.append(w[i])
          i += 1
      if len(out) == n:
        continue  # the index is lazy too: this word lost the pair in an earlier merge
      f = freqs[wi]
      for p in zip(w, w[1:]):
        delta[p] -= f
      for p in zip(out, out[1:]):
        delta[p] += f
        where[p].add(wi)
      words[wi] = out
    for p, d in delta.items():
      if d and p != (a, b):
        n = counts[p] + d
        if n > 0:
          counts[p] = n
          heapq.heappush(heap, (-n, key[p[0]], key[p[1]], p[0], p[1]))
        else:
          del counts[p]
    bar.update(len(merges))
  bar.close(len(merges))
  return merges


# ---------------------------------------------------------------------------------------------------
# Encoding and decoding.


def token_dtype(vocab_size):
  """The dtype of token files: uint16 when every id fits (vocab <= 65,536), else uint32."""
  if vocab_size <= 1 << 16:
    return np.dtype("<u2")
  if vocab_size <= 1 << 32:
    return np.dtype("<u4")
  raise UserError(f"vocab_size={vocab_size:,} does not fit the uint32 token files; use at most 2**32")


class Tokenizer:
  """Encodes text to token ids and back with a trained byte-level BPE."""

  def __init__(self, vocab, merges, special_tokens=None):
    self.vocab = {int(i): bytes(b) for i, b in vocab.items()}
    self.merges = [(bytes(a), bytes(b)) for a, b in merges]
    self._specials = _check_specials(special_tokens)
    id_of = {}
    for i in sorted(self.vocab):
      id_of.setdefault(self.vocab[i], i)
    for s in self._specials:  # specials missing from the vocab get new ids at the end
      if s.encode("utf-8") not in id_of:
        i = max(self.vocab, default=-1) + 1
        self.vocab[i] = s.encode("utf-8")
        id_of[s.encode("utf-8")] = i
    self._special_id = {s: id_of[s.encode("utf-8")] for s in self._specials}
    missing = [bytes([b]) for b in range(256) if bytes([b]) not in id_of]
    if missing:
      raise UserError(f"the vocab lacks {len(missing)} of the 256 single bytes (e.g. {missing[0]!r}); "
                      "a byte-level BPE needs all of them: re-train the tokenizer")
    self._byte_id = [id_of[bytes([b])] for b in range(256)]
    self._merge = {}  # (id_a, id_b) -> (rank, id of a+b)
    for rank, (a, b) in enumerate(self.merges):
      if a not in id_of or b not in id_of or a + b not in id_of:
        raise UserError(f"merge {rank} ({a!r}, {b!r}) uses a token missing from the vocab; the vocab and "
                        "merges do not belong together: re-train or re-export the tokenizer")
      self._merge.setdefault((id_of[a], id_of[b]), (rank, id_of[a + b]))
    self._special_re = _special_regex(self._specials)
    self._specials_b = [s.encode("utf-8") for s in self._specials]
    self._cache = {}

  def __getstate__(self):  # what worker processes receive: no need to ship the encode cache
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  @property
  def vocab_size(self):
    return max(self.vocab) + 1

  @property
  def special_tokens(self):
    return list(self._specials)

  def token_id(self, special):
    if special not in self._special_id:
      raise UserError(f"{special!r} is not a special token of this tokenizer (it has {self._specials}); "
                      "re-train the tokenizer with it or use one of those")
    return self._special_id[special]

  def _bpe(self, word):
    """Applies the merges to one pre-token: repeatedly merge the adjacent pair of lowest merge rank."""
    ids = [self._byte_id[b] for b in word.encode("utf-8")]
    merge = self._merge
    while len(ids) > 1:
      best = None
      for p in zip(ids, ids[1:]):
        m = merge.get(p)
        if m is not None and (best is None or m[0] < best[0]):
          best, pair = m, p
      if best is None:
        break
      a, b = pair
      out, i, n = [], 0, len(ids)
      while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
          out.append(best[1])
          i += 2
        else:
          out.append(ids[i])
          i += 1
      ids = out
    return ids

  def _encode_ordinary(self, text, out):
    cache = self._cache
    if len(cache) > 1 << 20:  # bound memory on text with unbounded distinct words
      cache.clear()
    extend = out.extend
    for w in _PAT.findall(text):
      ids = cache.get(w)
      if ids is None:
        ids = cache[w] = self._bpe(w)
      extend(ids)

  def encode(self, text):
    out = []
    if self._special_re is None:
      self._encode_ordinary(text, out)
      return out
    pos = 0
    for m in self._special_re.finditer(text):
      self._encode_ordinary(text[pos:m.start()], out)
      out.append(self._special_id[m.group()])
      pos = m.end()
    self._encode_ordinary(text[pos:], out)
    return out

  def encode_iterable(self, iterable, flush_chars=1 << 16):
    """Yields the ids of "".join(iterable) lazily. Text is buffered until flush_chars and cut at the last
    safe position (see _safe_cut) that the buffered text fully decides."""
    max_len = max((len(s) for s in self._specials), default=1)
    parts, n = [], 0
    for piece in iterable:
      parts.append(piece)
      n += len(piece)
      if n < flush_chars:
        continue
      buf = "".join(parts)
      cut = self._last_cut(buf, max_len)
      if cut > 0:
        yield from self.encode(buf[:cut])
        buf = buf[cut:]
      parts, n = [buf], len(buf)
    yield from self.encode("".join(parts))

  def _last_cut(self, buf, max_len):
    end = len(buf) - max_len + 1  # a special spanning the cut must lie wholly inside buf
    while end > 0:
      c = max(buf.rfind("\n", 0, end), buf.rfind(" ", 0, end))
      if c <= 0:
        return 0
      if "\x21" <= buf[c - 1] <= "\x7e" and _safe_cut(buf, c, self._specials):
        return c
      end = c
    return 0

  def decode(self, ids):
    """Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
    vocab = self.vocab
    try:
      data = b"".join([vocab[i] for i in ids])
    except (KeyError, TypeError):
      bad = next(i for i in ids if not isinstance(i, (int, np.integer)) or i not in vocab)
      raise UserError(f"token id {bad!r} is not in the vocab (valid ids: 0..{self.vocab_size - 1}); "
                      "the ids come from another tokenizer or model: use the matching tokenizer.json")
    return data.decode("utf-8", errors="replace")

  # -- files ------------------------------------------------------------------------------------------

  def save(self, path):
    """Writes one JSON file: format tag and version, vocab as hex bytes, merges, special tokens."""
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "special_tokens": self._specials,
        "vocab": {str(i): b.hex() for i, b in sorted(self.vocab.items())},
        "merges": [[a.hex(), b.hex()] for a, b in self.merges],
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=0)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path):
    fix = "re-run the tokenizer training (or data preparation) to write it again"
    try:
      with open(path) as f:
        obj = json.load(f)
    except FileNotFoundError:
      raise UserError(f"tokenizer file {path!r} does not exist; check the path or {fix}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UserError(f"tokenizer file {path!r} is unreadable or not JSON ({e}); it may be corrupt: {fix}")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
      raise UserError(f"{path!r} is not a {FORMAT} file (for GPT-2 style vocab.json + merges.txt use "
                      f"Tokenizer.from_files); {fix}")
    if obj.get("version") != VERSION:
      raise UserError(f"{path!r} has {FORMAT} version {obj.get('version')!r}, this code reads version "
                      f"{VERSION}; {fix}")
    try:
      vocab = {int(i): bytes.fromhex(h) for i, h in obj["vocab"].items()}
      merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in obj["merges"]]
      specials = [str(s) for s in obj["special_tokens"]]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise UserError(f"tokenizer file {path!r} is corrupt ({type(e).__name__}: {e}); {fix}")
    return cls(vocab, merges, specials)

  @classmethod
  def from_files(cls, vocab_path, merges_path, special_tokens=None):
    """Reads a GPT-2 style vocab.json (token string -> id) and merges.txt ("a b" per line), whose token
    strings spell bytes with GPT-2's printable byte-to-unicode map."""
    char_to_byte = {c: b for b, c in _gpt2_bytes_to_unicode().items()}

    def to_bytes(s):
      if all(ch in char_to_byte for ch in s):
        return bytes(char_to_byte[ch] for ch in s)
      return s.encode("utf-8")  # e.g. added special tokens written as plain text

    try:
      with open(vocab_path, encoding="utf-8") as f:
        vocab = {int(i): to_bytes(s) for s, i in json.load(f).items()}
      merges = []
      with open(merges_path, encoding="utf-8") as f:
        for line in f:
          line = line.rstrip("\r\n")
          if not line or line.startswith("#version"):
            continue
          a, b = line.split(" ")
          merges.append((to_bytes(a), to_bytes(b)))
    except OSError as e:
      raise UserError(f"cannot read {e.filename!r} ({e.strerror}); check the vocab.json/merges.txt paths")
    except (ValueError, AttributeError, TypeError) as e:
      raise UserError(f"{vocab_path!r} / {merges_path!r} are not GPT-2 style vocab.json (token -> id) and "
                      f"merges.txt ('a b' per line) files ({e}); export them again")
    return cls(vocab, merges, special_tokens)


def _gpt2_bytes_to_unicode():
  """GPT-2's map from each byte to a printable character (the printable Latin-1 bytes map to
  themselves; the others to U+0100 onwards, in order)."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  out, n = {}, 0
  for b in range(256):
    if b in keep:
      out[b] = chr(b)
    else:
      out[b] = chr(256 + n)
      n += 1
  return out


# ---------------------------------------------------------------------------------------------------
# Parallel file encoding.

_worker_tok = None


def _init_encoder(tok):
  global _worker_tok
  _worker_tok = tok


def _encode_chunk(task):
  path, start, end, dtype = task
  ids = _worker_tok.encode(_read_text(path, start, end))
  return np.asarray(ids, dtype=dtype).tobytes(), end - start


def encode_file(tokenizer, input_path, output_path, num_workers=None, progress=True):
  """Encodes a UTF-8 text file into a flat little-endian token file of token_dtype(vocab_size); returns
  the number of tokens. Chunks are cut at special tokens and encoded in parallel, written in order to a
  temporary file renamed into place at the end, so a half-written file never looks finished."""
  workers = _num_workers(num_workers)
  dtype = token_dtype(tokenizer.vocab_size)
  size = _file_size(input_path)
  n_chunks = max(math.ceil(size / _CHUNK_BYTES), 4 * workers if workers > 1 else 1)
  bounds = _chunk_bounds(input_path, tokenizer.special_tokens, n_chunks)
  tasks = [(input_path, s, e, dtype) for s, e in bounds]
  tmp = f"{output_path}.tmp{os.getpid()}"
  bar = _Progress(f"encode {os.path.basename(input_path)}", size, "MB", progress)
  n_bytes = done = 0
  try:
    with open(tmp, "wb") as f:
      for data, n in _imap_chunks(_encode_chunk, tasks, workers, _init_encoder, (tokenizer,)):
        f.write(data)
        n_bytes += len(data)
        done += n
        bar.update(done)
    os.replace(tmp, output_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  bar.close(done)
  return n_bytes // dtype.itemsize
