"""Data preparation: download TinyStories, train the BPE tokenizer, encode flat token files.

  python data.py --dataset=tinystories --out_dir=data/tinystories
  python data.py --dataset=tinystories_sample            # bundled sample, no download
  python data.py --dataset=text --train_file=corpus.txt [--val_file=v.txt | --val_fraction=0.01]

A prepared directory holds tokenizer.json, train.bin, val.bin, meta.json (format in
docs/INTERFACES.md and docs/data.md) and stages.json, the record each stage checks before doing
its work again: a rerun of a finished preparation only hashes and compares, so it takes seconds.
train.py reads the token files through `load_split`, which validates them against meta.json.
"""
import contextlib
import errno
import hashlib
import http.client
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request

import numpy as np

import errors
import tokenizer as tok_lib

SPECIAL_TOKENS = ["<|endoftext|>"]
DEFAULT_VOCAB_SIZE = 10_000  # the speedrun's rule for TinyStories
TINYSTORIES_BASE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
BASE_URL_ENV = "TINYSTORIES_BASE_URL"
# Known sizes and sha256 of the TinyStoriesV2-GPT4 files. UNVERIFIED: none of our machines could
# reach the internet, so they are None; a None size is checked against the server's
# Content-Length and a None sha256 is computed on the first download and kept in a
# `<file>.sha256` sidecar that every later run verifies against. Fill them in once confirmed.
TINYSTORIES_FILES = {
    "train": {"name": "TinyStoriesV2-GPT4-train.txt", "size": None, "sha256": None},
    "val": {"name": "TinyStoriesV2-GPT4-valid.txt", "size": None, "sha256": None},
}
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tinystories")
SPLITS = ("train", "val")
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Small file helpers


def file_sha256(path):
  """Hex sha256 of a file, read in 8 MB blocks (memory stays flat for multi-GB files)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(8 << 20):
      h.update(block)
  return h.hexdigest()


def _sha256_cached(path, cache):
  """file_sha256, remembered under (size, mtime_ns) so reruns skip rehashing GB-sized files."""
  st = os.stat(path)
  key = os.path.abspath(path)
  hit = cache.get(key)
  if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
    return hit[2]
  digest = file_sha256(path)
  cache[key] = [st.st_size, st.st_mtime_ns, digest]
  return digest


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)  # atomic: a reader sees the old or the new file, never half of one


def _read_json(path, default=None):
  if not os.path.exists(path):
    return default
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.UserError(f"{path} is not valid JSON ({e}); delete it and run data.py again")


@contextlib.contextmanager
def _disk_full_is_user_error(where):
  try:
    yield
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    raise errors.UserError(
        f"disk full while writing {where}: free some space and run the same command again "
        "(finished files and partial downloads are kept and resume)") from e


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


class _Progress:
  """One stderr line, rewritten at most twice a second: done/total MB, MB/s, ETA."""

  def __init__(self, name, total, start, enabled):
    self.name, self.total, self.start, self.enabled = name, total, start, enabled
    self.t0 = self.last = time.monotonic()

  def update(self, done, final=False):
    now = time.monotonic()
    if not self.enabled or (not final and now - self.last < 0.5):
      return
    self.last = now
    rate = (done - self.start) / max(now - self.t0, 1e-9) / 1e6
    msg = f"\r{self.name}: {done / 1e6:,.1f}"
    if self.total:
      eta = f"{(self.total - done) / 1e6 / rate:,.0f}s" if rate > 0 else "?"
      msg += (f"/{self.total / 1e6:,.1f} MB ({100 * done / self.total:.0f}%) {rate:.1f} MB/s "
              f"ETA {eta}")
    else:
      msg += f" MB {rate:.1f} MB/s"
    print(msg + ("\n" if final else "   "), end="", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Download (resumable, verified, atomic)


def _range_total(content_range):
  """Total size from a Content-Range header ('bytes 100-199/1000' or 'bytes */1000')."""
  try:
    return int(content_range.rsplit("/", 1)[1])
  except (AttributeError, IndexError, ValueError):
    return None


def _range_start(content_range):
  try:
    return int(content_range.split()[1].split("-")[0])
  except (AttributeError, IndexError, ValueError):
    return None


def _fetch_once(url, part, timeout_s, progress, name):
  """One HTTP attempt that appends to `part` (or restarts it). Returns the total size if known.

  Raises OSError / http.client.HTTPException on network faults (the caller retries) and
  _Incomplete when the connection ended early; whatever arrived stays in `part`.
  """
  offset = os.path.getsize(part) if os.path.exists(part) else 0
  req = urllib.request.Request(url, headers={"User-Agent": "data.py"})
  if offset:
    req.add_header("Range", f"bytes={offset}-")
  try:
    resp = urllib.request.urlopen(req, timeout=timeout_s)
  except urllib.error.HTTPError as e:
    if e.code == 416:  # Range past the end: the part file already holds the whole file (or more)
      total = _range_total(e.headers.get("Content-Range"))
      if total is not None and total == offset:
        return total
      os.remove(part)
      raise _Incomplete(f"server refused range {offset}- (size {total}); restarting from 0")
    raise
  with resp:
    if resp.status == 206:
      if _range_start(resp.headers.get("Content-Range")) != offset:
        os.remove(part)  # not the bytes we asked for: appending them would corrupt the file
        raise _Incomplete(f"server sent another range than bytes={offset}-; restarting from 0")
      total = _range_total(resp.headers.get("Content-Range"))
      mode = "ab"
    else:  # 200: the server ignored Range (or this is a fresh start): write from byte 0
      length = resp.headers.get("Content-Length")
      total = int(length) if length is not None else None
      offset, mode = 0, "wb"
    bar = _Progress(name, total, offset, progress)
    done = offset
    with open(part, mode) as f:
      while block := resp.read(_CHUNK):
        f.write(block)
        done += len(block)
        bar.update(done)
    bar.update(done, final=True)
  if total is not None and done < total:
    raise _Incomplete(f"connection closed at {done:,} of {total:,} bytes")
  return total


class _Incomplete(Exception):
  """The transfer stopped early; the bytes so far are kept and the next attempt resumes."""


def download(url, dest, *, expected_size=None, expected_sha256=None, retries=5, backoff_s=1.0,
             timeout_s=60.0, progress=True):
  """Downloads url to dest; resumes dest + '.part' with HTTP Range; verifies; renames atomically.

  `expected_size` / `expected_sha256` None: the size is checked against the server's length, and
  the sha256 is taken from a `dest.sha256` sidecar when one exists, else computed and written
  there. A file at `dest` has always passed these checks. Returns dest's sha256.
  """
  name = os.path.basename(dest)
  part, sidecar = dest + ".part", dest + ".sha256"
  if expected_sha256 is None and os.path.exists(sidecar):
    with open(sidecar) as f:
      expected_sha256 = f.read().split()[0]
  os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
  failures, total, last_err = 0, None, None
  with _disk_full_is_user_error(part):
    while True:
      before = os.path.getsize(part) if os.path.exists(part) else 0
      if expected_size is not None and before == expected_size:
        total = expected_size
        break  # already complete from an earlier run
      if expected_size is not None and before > expected_size:
        os.remove(part)
      try:
        total = _fetch_once(url, part, timeout_s, progress, name)
        break
      except urllib.error.HTTPError as e:
        if e.code < 500 and e.code != 429:  # 404, 403...: retrying will not help
          raise errors.UserError(
              f"{url} answered HTTP {e.code} {e.reason}: check the base URL (--base_url or "
              f"${BASE_URL_ENV}) or pass --local_dir=DIR with {name} in it") from e
        last_err = e
      except (OSError, http.client.HTTPException, _Incomplete) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
          raise
        last_err = e
      after = os.path.getsize(part) if os.path.exists(part) else 0
      failures = 0 if after > before else failures + 1  # progress made: the retry budget resets
      if failures > retries:
        kept = f"; the {after:,} bytes received are kept in {part} and resume" if after else ""
        raise errors.UserError(
            f"could not download {url} ({last_err}; {retries + 1} tries). No network? Use a mirror "
            f"with --base_url=URL or ${BASE_URL_ENV}=URL, or download the file yourself and pass "
            f"--local_dir=DIR containing {name}{kept}")
      wait = min(backoff_s * 2 ** max(failures - 1, 0), 60.0)
      _log(f"{name}: {last_err}; retrying in {wait:.1f}s")
      time.sleep(wait)
  digest = file_sha256(part)
  _verify(part, expected_size if expected_size is not None else total, expected_sha256, digest)
  if not os.path.exists(sidecar):
    with open(sidecar, "w") as f:
      f.write(f"{digest}  {name}\n")  # sha256sum format: `sha256sum -c` works on it
  os.replace(part, dest)
  return digest


def _verify(path, size, sha256, digest):
  """Size and sha256 checks; a mismatch names the file and how to start it over."""
  sidecar = (path[:-len(".part")] if path.endswith(".part") else path) + ".sha256"
  fix = (f"delete it (rm {shlex.quote(path)}) and run the same command again to download it "
         "afresh")
  actual_size = os.path.getsize(path)
  if size is not None and actual_size != size:
    raise errors.UserError(f"{path}: size {actual_size:,} bytes, expected {size:,}: {fix}")
  if sha256 is not None and digest != sha256:
    where = f"the sidecar {sidecar}" if os.path.exists(sidecar) else "the table in data.py"
    raise errors.UserError(
        f"{path}: sha256 {digest} does not match {sha256} from {where}: the file is corrupt; "
        f"{fix} (if the file changed upstream on purpose, delete {sidecar} too)")


def fetch_tinystories(out_dir, base_url=None, local_dir=None, cache=None, progress=True,
                      **download_opts):
  """Returns {'train': path, 'val': path} of the TinyStoriesV2-GPT4 text files.

  With local_dir, uses the files found there (checked against the known table); otherwise
  downloads into out_dir, skipping a file that is already complete and verified.
  """
  cache = {} if cache is None else cache
  base_url = (base_url or os.environ.get(BASE_URL_ENV) or TINYSTORIES_BASE_URL).rstrip("/")
  paths = {}
  for split, info in TINYSTORIES_FILES.items():
    name = info["name"]
    if local_dir:
      path = os.path.join(local_dir, name)
      if not os.path.isfile(path):
        raise errors.UserError(
            f"--local_dir={local_dir} has no {name}: put both "
            f"{', '.join(i['name'] for i in TINYSTORIES_FILES.values())} there, or drop "
            "--local_dir to download them")
      _verify_existing(path, info, cache)
      _log(f"[skip] download {name}: using {path}")
    else:
      path = os.path.join(out_dir, name)
      if os.path.exists(path):
        _verify_existing(path, info, cache)
        _log(f"[skip] download {name}: present and verified")
      else:
        _log(f"[run] download {base_url}/{name}")
        digest = download(f"{base_url}/{name}", path, expected_size=info["size"],
                          expected_sha256=info["sha256"], progress=progress, **download_opts)
        st = os.stat(path)
        cache[os.path.abspath(path)] = [st.st_size, st.st_mtime_ns, digest]
    paths[split] = path
  return paths


def _verify_existing(path, info, cache):
  expected, sidecar = info["sha256"], path + ".sha256"
  if expected is None and os.path.exists(sidecar):
    with open(sidecar) as f:
      expected = f.read().split()[0]
  _verify(path, info["size"], expected, _sha256_cached(path, cache))


# ---------------------------------------------------------------------------------------------
# Preparation stages


def split_text(train_file, out_dir, val_fraction, stages):
  """Splits one corpus into out_dir/{train,val}.txt at a document (else line) boundary.

  The cut lands on the `<|endoftext|>` (or newline) nearest to (1 - val_fraction) of the bytes,
  just after it, so train.txt + val.txt is byte-for-byte the original file.
  """
  if not 0 < val_fraction < 1:
    raise errors.UserError(f"--val_fraction={val_fraction} must be in (0, 1), or pass --val_file")
  paths = {s: os.path.join(out_dir, f"{s}.txt") for s in SPLITS}
  src_sha = _sha256_cached(train_file, stages["sha256_cache"])
  rec = stages.get("split")
  if (rec and rec["source_sha256"] == src_sha and rec["val_fraction"] == val_fraction and
      all(os.path.exists(p) and _sha256_cached(p, stages["sha256_cache"]) == rec[s]
          for s, p in paths.items())):
    _log(f"[skip] split {train_file}: train.txt/val.txt match")
    return paths
  _log(f"[run] split {train_file} (val_fraction={val_fraction})")
  with open(train_file, "rb") as f:
    data = f.read()
  cut = _boundary(data, int(len(data) * (1 - val_fraction)))
  if cut is None:
    raise errors.UserError(
        f"{train_file}: cannot split off a validation part with data in both (no "
        f"{SPECIAL_TOKENS[0]} or line boundary fits); pass --val_file or change --val_fraction")
  for s, chunk in (("train", data[:cut]), ("val", data[cut:])):
    with open(paths[s] + ".tmp", "wb") as f:
      f.write(chunk)
    os.replace(paths[s] + ".tmp", paths[s])
  stages["split"] = {"source": os.path.abspath(train_file), "source_sha256": src_sha,
                     "val_fraction": val_fraction,
                     **{s: _sha256_cached(p, stages["sha256_cache"]) for s, p in paths.items()}}
  return paths


def _boundary(data, target):
  """Cut position just after the boundary nearest to target with data left on both sides."""
  for sep in (SPECIAL_TOKENS[0].encode(), b"\n"):
    cands = []
    before = data.rfind(sep, 0, target)
    after = data.find(sep, target)
    for i in (before, after):
      if i >= 0:
        end = i + len(sep)
        if sep != b"\n" and data[end:end + 1] == b"\n":
          end += 1  # keep the separator's newline with the document it closes
        if 0 < end < len(data):
          cands.append(end)
    if cands:
      return min(cands, key=lambda c: abs(c - target))
  return None


def train_tokenizer(train_path, out_dir, vocab_size, stages, num_workers=None, progress=True):
  """Trains BPE on train_path into out_dir/tokenizer.json, or reuses the saved one if it matches."""
  path = os.path.join(out_dir, "tokenizer.json")
  cache = stages["sha256_cache"]
  src_sha = _sha256_cached(train_path, cache)
  want = {"source_sha256": src_sha, "vocab_size": vocab_size, "special_tokens": SPECIAL_TOKENS}
  rec = stages.get("tokenizer")
  if (rec and os.path.exists(path) and {k: rec.get(k) for k in want} == want and
      _sha256_cached(path, cache) == rec["sha256"]):
    _log(f"[skip] tokenizer: {path} matches (vocab {vocab_size}, same training text)")
    return tok_lib.Tokenizer.load(path), rec["sha256"]
  _log(f"[run] tokenizer: BPE vocab {vocab_size} on {train_path}")
  t0 = time.time()
  vocab, merges = tok_lib.train_bpe(train_path, vocab_size, SPECIAL_TOKENS,
                                    num_workers=num_workers, progress=progress)
  tok = tok_lib.Tokenizer(vocab, merges, SPECIAL_TOKENS)
  tok.save(path + ".tmp")
  os.replace(path + ".tmp", path)
  stages["tokenizer"] = {**want, "sha256": _sha256_cached(path, cache)}
  _log(f"       tokenizer trained in {time.time() - t0:.1f}s")
  return tok, stages["tokenizer"]["sha256"]


def encode_split(tok, tok_sha, split, src, out_dir, stages, num_workers=None, progress=True):
  """Encodes src into out_dir/<split>.bin unless the recorded output still matches."""
  out = os.path.join(out_dir, f"{split}.bin")
  itemsize = np.dtype(tok_lib.token_dtype(tok.vocab_size)).itemsize
  src_sha = _sha256_cached(src, stages["sha256_cache"])
  rec = stages.get(split)
  if (rec and rec["source_sha256"] == src_sha and rec["tokenizer_sha256"] == tok_sha and
      os.path.exists(out)):
    st = os.stat(out)
    if st.st_size == rec["n_tokens"] * itemsize and st.st_mtime_ns == rec["mtime_ns"]:
      _log(f"[skip] encode {split}: {out} matches ({rec['n_tokens']:,} tokens)")
      return rec
  _log(f"[run] encode {split}: {src} -> {out}")
  t0 = time.time()
  # encode_file writes a temporary file and renames it, so `out` is never half written.
  n_tokens = tok_lib.encode_file(tok, src, out, num_workers=num_workers, progress=progress)
  if os.path.getsize(out) != n_tokens * itemsize:  # a bug in tokenizer.py, not a user mistake
    raise RuntimeError(f"encode_file wrote {os.path.getsize(out)} bytes for {n_tokens} tokens")
  dt = time.time() - t0
  _log(f"       {n_tokens:,} tokens in {dt:.1f}s ({os.path.getsize(src) / 1e6 / dt:.1f} MB/s)")
  stages[split] = {"source": os.path.abspath(src), "source_sha256": src_sha,
                   "tokenizer_sha256": tok_sha, "n_tokens": n_tokens,
                   "mtime_ns": os.stat(out).st_mtime_ns}
  return stages[split]


def _command(dataset, out_dir, vocab_size, train_file, val_file, val_fraction, local_dir):
  """The command line that rebuilds out_dir, quoted in error messages as the fix."""
  cmd = f"python data.py --dataset={dataset} --out_dir={shlex.quote(out_dir)}"
  if local_dir:
    cmd += f" --local_dir={shlex.quote(os.path.abspath(local_dir))}"
  if vocab_size != DEFAULT_VOCAB_SIZE:
    cmd += f" --vocab_size={vocab_size}"
  if dataset == "text":
    cmd += f" --train_file={shlex.quote(os.path.abspath(train_file))}"
    cmd += (f" --val_file={shlex.quote(os.path.abspath(val_file))}" if val_file
            else f" --val_fraction={val_fraction}")
  return cmd


def prepare(dataset, out_dir=None, *, vocab_size=DEFAULT_VOCAB_SIZE, num_workers=None,
            base_url=None, local_dir=None, train_file=None, val_file=None, val_fraction=0.01,
            progress=True, download_opts=None):
  """Runs every stage for `dataset` into out_dir (default data/<dataset>); returns out_dir.

  Stages: [download | split] -> tokenizer -> encode train -> encode val -> meta.json. Each one
  is skipped when stages.json says its output exists and was made from the same inputs.
  """
  if dataset not in ("tinystories", "tinystories_sample", "text"):
    raise errors.UserError(
        f"unknown --dataset={dataset}: use tinystories, tinystories_sample or text")
  unused = [flag for flag, v, ds in (("--base_url", base_url, "tinystories"),
                                     ("--local_dir", local_dir, "tinystories"),
                                     ("--train_file", train_file, "text"),
                                     ("--val_file", val_file, "text")) if v and dataset != ds]
  if unused:
    raise errors.UserError(f"{', '.join(unused)} do(es) not apply to --dataset={dataset}: drop "
                           "it, or pick the dataset it belongs to (see docs/data.md)")
  if dataset == "text" and not train_file:
    raise errors.UserError("--dataset=text needs --train_file=PATH (and --val_file or "
                           "--val_fraction)")
  for flag, path in (("--train_file", train_file), ("--val_file", val_file)):
    if path and not os.path.isfile(path):
      raise errors.UserError(f"{flag}={path} does not exist: give the path of a text file")
  tok_lib.token_dtype(vocab_size)  # a vocab too large for the token dtypes fails before any work
  if vocab_size < 256 + len(SPECIAL_TOKENS):
    raise errors.UserError(f"--vocab_size={vocab_size} is below the 256 byte tokens + specials; "
                           "use at least 257 (10,000 for TinyStories)")
  out_dir = out_dir or os.path.join("data", dataset)
  os.makedirs(out_dir, exist_ok=True)
  stages_path = os.path.join(out_dir, "stages.json")
  stages = _read_json(stages_path, {}) or {}
  stages.setdefault("sha256_cache", {})
  stages["command"] = _command(dataset, out_dir, vocab_size, train_file, val_file, val_fraction,
                               local_dir)
  t0 = time.time()
  try:
    with _disk_full_is_user_error(out_dir):
      if dataset == "tinystories":
        src = fetch_tinystories(out_dir, base_url, local_dir, stages["sha256_cache"], progress,
                                **(download_opts or {}))
      elif dataset == "tinystories_sample":
        # valid.txt separates stories by blank lines, not <|endoftext|>: encoded as it is.
        src = {"train": os.path.join(SAMPLE_DIR, "train.txt"),
               "val": os.path.join(SAMPLE_DIR, "valid.txt")}
      elif val_file:
        src = {"train": train_file, "val": val_file}
      else:
        src = split_text(train_file, out_dir, val_fraction, stages)
      tok, tok_sha = train_tokenizer(src["train"], out_dir, vocab_size, stages, num_workers,
                                     progress)
      _write_json(stages_path, stages)
      recs = {}
      for split in SPLITS:
        recs[split] = encode_split(tok, tok_sha, split, src[split], out_dir, stages,
                                   num_workers, progress)
        _write_json(stages_path, stages)
      _write_meta(out_dir, tok, tok_sha, recs)
  finally:
    # Keep the record of what finished so the next run resumes there (best effort: on a full
    # disk this write fails too, and the error to show is the one above).
    with contextlib.suppress(OSError):
      _write_json(stages_path, stages)
  _log(f"prepared {out_dir} in {time.time() - t0:.1f}s")
  return out_dir


def _write_meta(out_dir, tok, tok_sha, recs):
  meta = {"format": 1, "vocab_size": tok.vocab_size,
          "dtype": np.dtype(tok_lib.token_dtype(tok.vocab_size)).name,
          "tokenizer_sha256": tok_sha,
          "splits": {s: {k: recs[s][k] for k in ("n_tokens", "source_sha256", "source")}
                     for s in SPLITS}}
  path = os.path.join(out_dir, "meta.json")
  if _read_json(path) == meta:
    _log("[skip] meta.json: up to date")
  else:
    _write_json(path, meta)
    _log("[run] meta.json written")


# ---------------------------------------------------------------------------------------------
# Reading prepared data (train.py, sample.py)


def _fix_hint(data_dir):
  stages = _read_json(os.path.join(data_dir, "stages.json"), {}) or {}
  cmd = stages.get("command") or f"python data.py --dataset=... --out_dir={data_dir}"
  return f"re-run `{cmd}` to rebuild {data_dir}"


def read_meta(data_dir):
  """meta.json of a prepared directory, checked for its fields and against tokenizer.json."""
  path = os.path.join(data_dir, "meta.json")
  if not os.path.exists(path):
    raise errors.UserError(
        f"{data_dir} is not a prepared dataset (no meta.json): run `python data.py "
        f"--dataset=tinystories_sample --out_dir={data_dir}` (or another --dataset) first")
  meta = _read_json(path)
  try:
    ok = (meta["format"] == 1 and
          meta["dtype"] == np.dtype(tok_lib.token_dtype(meta["vocab_size"])).name and
          all(isinstance(meta["splits"][s]["n_tokens"], int) for s in SPLITS))
  except (KeyError, TypeError, errors.UserError):
    ok = False
  if not ok:
    raise errors.UserError(f"{path} is malformed or from another version: {_fix_hint(data_dir)}")
  tok_path = os.path.join(data_dir, "tokenizer.json")
  if os.path.exists(tok_path) and file_sha256(tok_path) != meta["tokenizer_sha256"]:
    raise errors.UserError(f"{path} disagrees with {tok_path} (tokenizer sha256 differs): the "
                           f"token files were made with another tokenizer; {_fix_hint(data_dir)}")
  return meta


def load_tokenizer(data_dir):
  """The Tokenizer of a prepared directory, checked against meta.json."""
  meta = read_meta(data_dir)
  tok = tok_lib.Tokenizer.load(os.path.join(data_dir, "tokenizer.json"))
  if tok.vocab_size != meta["vocab_size"]:
    raise errors.UserError(f"{data_dir}/meta.json says vocab {meta['vocab_size']} but "
                           f"tokenizer.json has {tok.vocab_size}: {_fix_hint(data_dir)}")
  return tok


def check_tokens(arr, vocab_size, name="token file", chunk=1 << 24):
  """Raises UserError if any id >= vocab_size; reads arr in chunks so memmaps stay cheap."""
  for start in range(0, len(arr), chunk):
    top = int(np.max(arr[start:start + chunk]))
    if top >= vocab_size:
      pos = start + int(np.argmax(np.asarray(arr[start:start + chunk]) >= vocab_size))
      raise errors.UserError(
          f"{name}: token id {int(arr[pos])} at position {pos:,} is >= vocab size {vocab_size}: "
          "the file is corrupt or from another tokenizer; prepare it again with data.py")


def load_split(data_dir, split, check_ids=True):
  """Read-only np.memmap of <data_dir>/<split>.bin, validated against meta.json.

  check_ids also scans every id against the vocab (about 1 s per GB); pass False to skip it.
  """
  if split not in SPLITS:
    raise errors.UserError(f"unknown split {split!r}: use one of {SPLITS}")
  meta = read_meta(data_dir)
  path = os.path.join(data_dir, f"{split}.bin")
  dtype = np.dtype(meta["dtype"]).newbyteorder("<")
  n_tokens = meta["splits"][split]["n_tokens"]
  if not os.path.exists(path):
    raise errors.UserError(f"{path} is missing: {_fix_hint(data_dir)}")
  size = os.path.getsize(path)
  if size % dtype.itemsize or size // dtype.itemsize != n_tokens:
    raise errors.UserError(
        f"{path} is corrupt or truncated: {size:,} bytes, but meta.json says {n_tokens:,} "
        f"{dtype.name} tokens ({n_tokens * dtype.itemsize:,} bytes); {_fix_hint(data_dir)}")
  if n_tokens == 0:
    raise errors.UserError(f"{path} holds no tokens: {_fix_hint(data_dir)} with a non-empty text")
  arr = np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))
  if check_ids:
    try:
      check_tokens(arr, meta["vocab_size"], name=path)
    except errors.UserError as e:
      raise errors.UserError(f"{e} ({_fix_hint(data_dir)})") from None
  return arr


# ---------------------------------------------------------------------------------------------
# Command line


def _define_flags():
  # Defined only when run as a script, so `import data` adds no flags to train.py's.
  from absl import flags
  flags.DEFINE_enum("dataset", "tinystories_sample", ["tinystories", "tinystories_sample", "text"],
                    "Which corpus to prepare.")
  flags.DEFINE_string("out_dir", None, "Output directory (default data/<dataset>).")
  flags.DEFINE_integer("vocab_size", DEFAULT_VOCAB_SIZE, "BPE vocabulary size.")
  flags.DEFINE_integer("num_workers", None, "Processes for BPE training and encoding "
                       "(default: all cores).")
  flags.DEFINE_string("base_url", None, f"TinyStories mirror (default ${BASE_URL_ENV} or "
                      f"{TINYSTORIES_BASE_URL}).")
  flags.DEFINE_string("local_dir", None, "Directory that already holds the TinyStories files.")
  flags.DEFINE_string("train_file", None, "--dataset=text: the training text.")
  flags.DEFINE_string("val_file", None, "--dataset=text: the validation text.")
  flags.DEFINE_float("val_fraction", 0.01, "--dataset=text without --val_file: share of "
                     "train_file split off (at a document or line boundary) for validation.")
  return flags.FLAGS


@errors.cli
def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: data.py takes only --flags")
  f = FLAGS
  try:
    prepare(f.dataset, f.out_dir, vocab_size=f.vocab_size, num_workers=f.num_workers,
            base_url=f.base_url, local_dir=f.local_dir, train_file=f.train_file,
            val_file=f.val_file, val_fraction=f.val_fraction)
  except KeyboardInterrupt:
    print("\ninterrupted: finished stages and partial downloads are kept; run the same command "
          "to resume", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  from absl import app
  FLAGS = _define_flags()
  app.run(main)
