"""data.py: the resumable, verified download (against a local HTTP server on 127.0.0.1), the
preparation stages on a slice of the bundled TinyStories sample with the real tokenizer, and the
errors a user meets with corrupt or mismatched files.

References are independent of data.py: hashlib for checksums, the source text itself for the
round trip, the server's own request log for "resumed with Range".
"""
import errno
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import data
import errors
import tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_TRAIN = os.path.join(data.SAMPLE_DIR, "train.txt")
EOT = "<|endoftext|>"


# ---------------------------------------------------------------------------------------------
# A small HTTP server with the faults a real download meets.


class _Handler(http.server.BaseHTTPRequestHandler):
  """GET of the server's files with Range support; faults are switched on the server object."""

  def do_GET(self):
    srv = self.server
    rng = self.headers.get("Range")
    srv.log.append((self.path, rng))
    body = srv.files.get(self.path)
    if body is None:
      self.send_error(404)
      return
    if srv.corrupt:
      body = bytes(reversed(body))  # same length, wrong bytes
    start = 0
    if rng and not srv.ignore_range:
      start = int(rng.split("=")[1].split("-")[0])
      if start >= len(body):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(body)}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
      self.send_response(200)
    payload = body[start:]
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    if srv.drop_first and len(srv.log) == 1:
      # Announce the full length, send half, then hang up: a dropped connection.
      self.wfile.write(payload[:len(payload) // 2])
      self.wfile.flush()
      self.close_connection = True
      return
    self.wfile.write(payload)

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  srv.daemon_threads = True
  srv.files, srv.log = {}, []
  srv.drop_first = srv.ignore_range = srv.corrupt = False
  srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()
  thread.join(timeout=5)


def _blob(n=300_000, seed=0):
  return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


FAST = {"retries": 3, "backoff_s": 0.01, "timeout_s": 10, "progress": False}


def test_download_full_writes_file_and_sidecar(server, tmp_path):
  body = _blob()
  server.files["/a.bin"] = body
  dest = str(tmp_path / "a.bin")
  digest = data.download(server.url + "/a.bin", dest, **FAST)
  assert open(dest, "rb").read() == body
  assert digest == hashlib.sha256(body).hexdigest()
  assert open(dest + ".sha256").read().split() == [digest, "a.bin"]
  assert not os.path.exists(dest + ".part")
  assert server.log == [("/a.bin", None)]


def test_download_resumes_with_range_after_dropped_connection(server, tmp_path):
  body = _blob()
  server.files["/a.bin"] = body
  server.drop_first = True
  dest = str(tmp_path / "a.bin")
  data.download(server.url + "/a.bin", dest, expected_sha256=hashlib.sha256(body).hexdigest(),
                **FAST)
  assert open(dest, "rb").read() == body
  # The second request asked only for the bytes that the first one did not deliver.
  assert server.log == [("/a.bin", None), ("/a.bin", f"bytes={len(body) // 2}-")]


def test_download_server_without_range_restarts_from_zero(server, tmp_path):
  body = _blob()
  server.files["/a.bin"] = body
  server.drop_first = server.ignore_range = True
  dest = str(tmp_path / "a.bin")
  data.download(server.url + "/a.bin", dest, **FAST)
  assert server.log[1][1] == f"bytes={len(body) // 2}-"  # asked to resume, got the whole file
  assert open(dest, "rb").read() == body


def test_download_checksum_mismatch_is_user_error_and_not_complete(server, tmp_path):
  body = _blob()
  server.files["/a.bin"] = body
  server.corrupt = True
  dest = str(tmp_path / "a.bin")
  with pytest.raises(errors.UserError, match=r"a\.bin.*sha256.*rm "):
    data.download(server.url + "/a.bin", dest, expected_sha256=hashlib.sha256(body).hexdigest(),
                  **FAST)
  assert not os.path.exists(dest)
  # With no known checksum, the first good download's sidecar guards the later ones.
  server.corrupt = False
  os.remove(dest + ".part")
  data.download(server.url + "/a.bin", dest, **FAST)
  os.remove(dest)
  server.corrupt = True
  with pytest.raises(errors.UserError, match=r"sidecar"):
    data.download(server.url + "/a.bin", dest, **FAST)
  assert not os.path.exists(dest)


def test_download_without_server_names_url_and_mirror_options(tmp_path):
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/TinyStoriesV2-GPT4-valid.txt"
  with pytest.raises(errors.UserError) as e:
    data.download(url, str(tmp_path / "v.txt"), **FAST)
  msg = str(e.value)
  assert url in msg and "--base_url" in msg and data.BASE_URL_ENV in msg and "--local_dir" in msg
  assert not os.path.exists(tmp_path / "v.txt")


def test_download_finishes_a_complete_part_file_without_refetching(server, tmp_path):
  body = _blob()
  server.files["/a.bin"] = body
  dest = str(tmp_path / "a.bin")
  open(dest + ".part", "wb").write(body)  # a run that died between the last byte and the rename
  data.download(server.url + "/a.bin", dest, **FAST)
  assert open(dest, "rb").read() == body
  assert server.log == [("/a.bin", f"bytes={len(body)}-")]  # answered 416: nothing re-sent


def test_download_404_is_user_error(server, tmp_path):
  with pytest.raises(errors.UserError, match="404"):
    data.download(server.url + "/missing.txt", str(tmp_path / "m.txt"), **FAST)
  assert len(server.log) == 1  # a 404 is not retried


def test_download_disk_full_is_user_error_and_keeps_partial(server, tmp_path, monkeypatch):
  body = _blob(3 << 20)
  server.files["/a.bin"] = body
  real_open = open

  class _FullDisk:
    """A file that takes the first MB, then fails the way a full disk does."""

    def __init__(self, f):
      self.f, self.n = f, 0

    def write(self, b):
      if self.n + len(b) > (1 << 20):
        raise OSError(errno.ENOSPC, "No space left on device")
      self.n += len(b)
      return self.f.write(b)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

  def fake_open(path, mode="r", *args, **kwargs):
    f = real_open(path, mode, *args, **kwargs)
    return _FullDisk(f) if str(path).endswith(".part") else f

  monkeypatch.setattr(data, "open", fake_open, raising=False)
  dest = str(tmp_path / "a.bin")
  with pytest.raises(errors.UserError, match="disk full"):
    data.download(server.url + "/a.bin", dest, **FAST)
  kept = real_open(dest + ".part", "rb").read()
  assert 0 < len(kept) <= 1 << 20 and kept == body[:len(kept)]
  monkeypatch.undo()
  data.download(server.url + "/a.bin", dest, **FAST)  # space freed: resumes from what was kept
  assert open(dest, "rb").read() == body
  assert server.log[-1][1] == f"bytes={len(kept)}-"


# ---------------------------------------------------------------------------------------------
# Preparation on a small real corpus (vocab 400 keeps BPE training fast).


def _corpus_slice(n_bytes):
  text = open(SAMPLE_TRAIN, encoding="utf-8").read()
  cut = text.index(EOT + "\n", n_bytes) + len(EOT) + 1
  return text[:cut]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("prep")
  corpus = root / "corpus.txt"
  corpus.write_bytes(_corpus_slice(150_000).encode())
  out = str(root / "out")
  data.prepare("text", out, vocab_size=400, train_file=str(corpus), val_fraction=0.1,
               num_workers=2, progress=False)
  return out, str(corpus)


def _decode_bin(out, split):
  tok = tokenizer.Tokenizer.load(os.path.join(out, "tokenizer.json"))
  return tok.decode(np.asarray(data.load_split(out, split)).tolist())


def test_prepare_text_round_trips_exactly(prepared):
  out, corpus = prepared
  source = open(corpus, "rb").read()
  train_txt = open(os.path.join(out, "train.txt"), "rb").read()
  val_txt = open(os.path.join(out, "val.txt"), "rb").read()
  assert train_txt + val_txt == source
  assert train_txt.endswith((EOT + "\n").encode())  # cut at a document boundary
  assert 0.05 < len(val_txt) / len(source) < 0.15
  assert _decode_bin(out, "train") == train_txt.decode()
  assert _decode_bin(out, "val") == val_txt.decode()
  # Each document separator is the one special token, not its characters spelled out.
  eot = tokenizer.Tokenizer.load(os.path.join(out, "tokenizer.json")).token_id(EOT)
  for split, txt in (("train", train_txt), ("val", val_txt)):
    assert np.count_nonzero(data.load_split(out, split) == eot) == txt.count(EOT.encode()) > 0


def test_prepare_writes_meta_in_the_documented_format(prepared):
  out, _ = prepared
  meta = json.load(open(os.path.join(out, "meta.json")))
  sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
  assert set(meta) == {"format", "vocab_size", "dtype", "tokenizer_sha256", "splits"}
  assert (meta["format"], meta["vocab_size"], meta["dtype"]) == (1, 400, "uint16")
  assert meta["tokenizer_sha256"] == sha(os.path.join(out, "tokenizer.json"))
  for split in ("train", "val"):
    rec = meta["splits"][split]
    src = os.path.join(out, f"{split}.txt")
    assert set(rec) == {"n_tokens", "source_sha256", "source"}
    assert os.path.samefile(rec["source"], src)
    assert rec["source_sha256"] == sha(src)
    assert rec["n_tokens"] * 2 == os.path.getsize(os.path.join(out, f"{split}.bin"))
  assert data.read_meta(out) == meta


def test_rerun_skips_every_stage(prepared, capsys, monkeypatch):
  out, corpus = prepared
  files = sorted(os.listdir(out))
  mtimes = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in files if f != "stages.json"}

  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished stage ran again")

  monkeypatch.setattr(tokenizer, "train_bpe", must_not_run)
  monkeypatch.setattr(tokenizer, "encode_file", must_not_run)
  capsys.readouterr()
  data.prepare("text", out, vocab_size=400, train_file=corpus, val_fraction=0.1, progress=False)
  err = capsys.readouterr().err
  for stage in ("split", "tokenizer", "encode train", "encode val", "meta.json"):
    assert f"[skip] {stage}" in err, err
  assert "[run]" not in err
  assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in mtimes} == mtimes


@pytest.fixture
def prepared_copy(prepared, tmp_path):
  out = str(tmp_path / "copy")
  shutil.copytree(prepared[0], out)
  return out


def test_truncated_token_file_is_user_error_then_rerun_repairs_it(prepared, prepared_copy):
  out, corpus = prepared_copy, prepared[1]
  path = os.path.join(out, "train.bin")
  good = open(path, "rb").read()
  for cut in (1, 2):  # not a multiple of uint16; a whole token short
    open(path, "wb").write(good[:-cut])
    with pytest.raises(errors.UserError, match=r"truncated.*python data\.py --dataset=text"):
      data.load_split(out, "train")
  # The message's remedy works: rerunning re-encodes only the damaged split.
  data.prepare("text", out, vocab_size=400, train_file=corpus, val_fraction=0.1, progress=False)
  assert open(path, "rb").read() == good


def test_out_of_range_token_is_user_error(prepared_copy):
  path = os.path.join(prepared_copy, "val.bin")
  arr = np.fromfile(path, dtype="<u2")
  arr[len(arr) // 2] = 400  # == vocab_size
  arr.tofile(path)
  with pytest.raises(errors.UserError, match=r"400.*>= vocab size 400.*python data\.py"):
    data.load_split(prepared_copy, "val")


def test_meta_disagreeing_with_tokenizer_is_user_error(prepared_copy):
  path = os.path.join(prepared_copy, "meta.json")
  meta = json.load(open(path))
  with open(path, "w") as f:
    json.dump({**meta, "tokenizer_sha256": "0" * 64}, f)
  with pytest.raises(errors.UserError, match=r"disagrees.*python data\.py"):
    data.load_split(prepared_copy, "train")
  with open(path, "w") as f:
    json.dump({**meta, "vocab_size": 500}, f)
  with pytest.raises(errors.UserError, match=r"vocab 500.*400"):
    data.load_tokenizer(prepared_copy)


def test_check_tokens_scans_every_chunk():
  arr = np.arange(1000, dtype=np.uint16) % 300
  data.check_tokens(arr, 300, chunk=64)  # max id 299 < 300
  arr[999] = 300
  with pytest.raises(errors.UserError, match="position 999"):
    data.check_tokens(arr, 300, chunk=64)


def test_split_falls_back_to_line_boundary(tmp_path):
  text = "".join(f"line {i} of a corpus without document markers\n" for i in range(100))
  src = tmp_path / "c.txt"
  src.write_text(text)
  paths = data.split_text(str(src), str(tmp_path), 0.2, {"sha256_cache": {}})
  train, val = (open(paths[s]).read() for s in ("train", "val"))
  assert train + val == text and train.endswith("\n") and val.startswith("line ")
  assert abs(len(val) / len(text) - 0.2) < 0.02


def test_tinystories_from_mirror_env_var(server, tmp_path, monkeypatch):
  """The full `--dataset=tinystories` path against a mirror given by the environment."""
  texts = {"train": _corpus_slice(40_000), "val": _corpus_slice(5_000)}
  for split, info in data.TINYSTORIES_FILES.items():
    server.files["/ts/" + info["name"]] = texts[split].encode()
  monkeypatch.setenv(data.BASE_URL_ENV, server.url + "/ts")
  out = str(tmp_path / "ts")
  data.prepare("tinystories", out, vocab_size=300, num_workers=1, progress=False,
               download_opts={k: v for k, v in FAST.items() if k != "progress"})
  for split, info in data.TINYSTORIES_FILES.items():
    path = os.path.join(out, info["name"])
    digest = hashlib.sha256(texts[split].encode()).hexdigest()
    assert open(path + ".sha256").read().split()[0] == digest
    assert data.read_meta(out)["splits"][split]["source_sha256"] == digest
    assert _decode_bin(out, split) == texts[split]
  n_requests = len(server.log)
  # --local_dir: the same files from disk, no request at all.
  out2 = str(tmp_path / "ts2")
  data.prepare("tinystories", out2, vocab_size=300, num_workers=1, progress=False, local_dir=out)
  assert len(server.log) == n_requests
  assert data.read_meta(out2)["splits"] == data.read_meta(out)["splits"]


@pytest.mark.slow  # BPE 10,000 on 4.5 MB, then a pure-Python decode: about 5 s on 2 cores
def test_tinystories_sample_keeps_valid_txt_as_is(tmp_path):
  out = data.prepare("tinystories_sample", str(tmp_path / "s"), num_workers=2, progress=False)
  meta = data.read_meta(out)
  assert meta["vocab_size"] == 10_000 and meta["dtype"] == "uint16"
  valid = open(os.path.join(data.SAMPLE_DIR, "valid.txt"), encoding="utf-8").read()
  assert _decode_bin(out, "val") == valid  # blank-line separated, no <|endoftext|> added
  assert meta["splits"]["train"]["source_sha256"] == hashlib.sha256(
      open(SAMPLE_TRAIN, "rb").read()).hexdigest()


def test_flag_mistakes_are_user_errors(tmp_path):
  with pytest.raises(errors.UserError, match=r"TinyStoriesV2-GPT4-train\.txt"):
    data.prepare("tinystories", str(tmp_path / "o"), local_dir=str(tmp_path), progress=False)
  with pytest.raises(errors.UserError, match=r"--local_dir.*--dataset=text"):
    data.prepare("text", str(tmp_path / "o"), train_file=SAMPLE_TRAIN, local_dir=str(tmp_path))
  with pytest.raises(errors.UserError, match=r"--val_file=.*does not exist"):
    data.prepare("text", str(tmp_path / "o"), train_file=SAMPLE_TRAIN,
                 val_file=str(tmp_path / "nope.txt"))


def test_cli_reports_a_user_error_on_one_line_with_status_2(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "--dataset=text",
                      f"--out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "error: --dataset=text needs --train_file=PATH (and --val_file or --val_fraction)"]
