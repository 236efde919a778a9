"""speedrun.py: the whole chain from nothing (download from a local mirror on 127.0.0.1, BPE, encode,
train, eval, story) through the command line, its rerun, Ctrl-C during training, and the bundled sample.

References are independent of speedrun.py: the served bytes, model.loss_fn over val.bin read with
NumPy, a brute-force greedy loop over model.forward, the checkpoint files' own mtimes.
"""
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data
import model
import speedrun
import tokenizer
import train
from configs import tiny
from errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = "<|endoftext|>"
MODEL = dict(vocab_size=300, d_model=32, n_layers=2, n_heads=2, d_ff=64, context_length=64)
TRAIN = dict(batch_size=8, steps=30, lr=1e-2, min_lr=1e-3, warmup_steps=3, log_every=10, eval_every=15,
             ckpt_every=15)
MAX_NEW = 40


def _docs(start, n_bytes):
  """Whole TinyStories documents (each ends with <|endoftext|>\\n) from the bundled sample."""
  text = open(os.path.join(data.SAMPLE_DIR, "train.txt"), encoding="utf-8").read()
  a = 0 if start == 0 else text.index(EOT + "\n", start) + len(EOT) + 1
  b = text.index(EOT + "\n", a + n_bytes) + len(EOT) + 1
  return text[a:b]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
  """A TinyStories mirror: the two files under their real names, served over HTTP on 127.0.0.1."""
  root = tmp_path_factory.mktemp("mirror")
  files = {data.TINYSTORIES_FILES["train"]["name"]: _docs(0, 60_000).encode(),
           data.TINYSTORIES_FILES["val"]["name"]: _docs(200_000, 12_000).encode()}
  for name, body in files.items():
    (root / name).write_bytes(body)
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
      requests.append(self.path)

  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
  srv.daemon_threads = True
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  yield {"url": f"http://127.0.0.1:{srv.server_address[1]}", "files": files, "requests": requests}
  srv.shutdown()
  srv.server_close()


def _args(mirror, data_dir, workdir, train_=None, extra=()):
  args = [sys.executable, os.path.join(ROOT, "speedrun.py"),
          "--config=" + os.path.join(ROOT, "configs/tiny.py"),
          f"--workdir={workdir}", "--config.data.dataset=tinystories", f"--config.data.dir={data_dir}",
          f"--base_url={mirror['url']}", "--num_workers=1", "--temperature=0", f"--max_new_tokens={MAX_NEW}"]
  args += [f"--config.model.{k}={v}" for k, v in MODEL.items()]
  args += [f"--config.train.{k}={v}" for k, v in {**TRAIN, **(train_ or {})}.items()]
  return args + list(extra)


def _run(args):
  return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _record(workdir):
  with open(os.path.join(workdir, "speedrun.json")) as f:
    return json.load(f)


def _mtimes(path):
  return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
          for d, _, names in os.walk(path) for n in names}


@pytest.fixture(scope="module")
def first(mirror, tmp_path_factory):
  """`python speedrun.py ...` from nothing: no data directory, no workdir."""
  root = tmp_path_factory.mktemp("speedrun")
  data_dir, workdir = str(root / "data"), str(root / "run")
  r = _run(_args(mirror, data_dir, workdir))
  assert r.returncode == 0, r.stderr[-3000:]
  return {"data_dir": data_dir, "workdir": workdir, "proc": r, "record": _record(workdir),
          "n_requests": len(mirror["requests"])}


def test_first_run_builds_every_stage_from_the_mirror(first, mirror):
  rec, d, w = first["record"], first["data_dir"], first["workdir"]
  assert {n: s["skipped"] for n, s in rec["stages"].items()} == {
      "data": False, "train": False, "eval": False, "sample": False}
  for name, body in mirror["files"].items():  # downloaded byte for byte, from the mirror only
    assert open(os.path.join(d, name), "rb").read() == body
    assert "/" + name in mirror["requests"]
  for name in ("tokenizer.json", "train.bin", "val.bin", "meta.json"):
    assert os.path.exists(os.path.join(d, name))
  assert data.read_meta(d)["vocab_size"] == MODEL["vocab_size"]
  assert os.path.isdir(os.path.join(w, "checkpoints", str(TRAIN["steps"])))
  out = first["proc"].stdout
  for name in ("data", "train", "eval", "sample"):  # each stage's time as it finishes, then the table
    assert f"[speedrun] {name}: " in out
  assert "stage    seconds  skipped" in out and "final val loss" in out
  assert rec["steps"] == TRAIN["steps"]
  assert rec["tokens"] == TRAIN["steps"] * TRAIN["batch_size"] * MODEL["context_length"]
  assert rec["train_s"] > 0 and rec["tokens_per_s"] == pytest.approx(rec["tokens"] / rec["train_s"])
  assert rec["interrupted"] is False and rec["device"] == jax.devices()[0].device_kind


def _reference_val_loss(workdir, data_dir, eval_tokens=0):
  """model.loss_fn over val.bin read with NumPy: non-overlapping windows of T inputs, next-token targets."""
  params, config = train.load_checkpoint(workdir)
  T = config.model.context_length
  val = np.fromfile(os.path.join(data_dir, "val.bin"), dtype="<u2").astype(np.int32)
  if eval_tokens:
    val = val[:eval_tokens]
  n_win = (len(val) - 1) // T
  loss = jax.jit(lambda p, x, y: model.loss_fn(p, x, y, config.model))
  # Equal-sized chunks of windows, so the mean of the chunk means is the mean over all tokens.
  total, chunk = 0.0, 64
  for i in range(0, n_win, chunk):
    idx = np.arange(i, min(i + chunk, n_win))[:, None] * T + np.arange(T)[None, :]
    total += float(loss(params, val[idx], val[idx + 1])) * len(idx)
  return total / n_win, n_win * T


def test_val_loss_is_the_mean_over_the_whole_val_split(first):
  ref, n_tokens = _reference_val_loss(first["workdir"], first["data_dir"])
  assert first["record"]["val_tokens"] == n_tokens
  assert first["record"]["val_loss"] == pytest.approx(ref, rel=1e-5)
  assert first["record"]["val_loss"] < np.log(MODEL["vocab_size"])  # it learned something


def test_story_is_the_greedy_continuation_of_the_prompt(first):
  """--temperature=0: the story must be what a brute-force argmax loop over model.forward writes."""
  params, config = train.load_checkpoint(first["workdir"])
  tok = tokenizer.Tokenizer.load(os.path.join(first["data_dir"], "tokenizer.json"))
  eos = tok.token_id(EOT)
  ids = [eos] + tok.encode(speedrun.PROMPT)
  S = config.model.context_length
  fwd = jax.jit(lambda p, x: model.forward(p, x, config.model))
  new = []
  for _ in range(MAX_NEW):  # causal: the zeros after the prefix do not change its logits
    x = np.zeros((1, S), np.int32)
    x[0, :len(ids)] = ids
    nxt = int(jnp.argmax(fwd(params, x)[0, len(ids) - 1]))
    if nxt == eos:
      break
    ids.append(nxt)
    new.append(nxt)
  story = first["record"]["story"]
  assert new and story == speedrun.PROMPT + tok.decode(new)
  assert story in first["proc"].stdout


def test_rerun_skips_data_and_train_and_gives_the_same_results(first, mirror):
  before = _mtimes(first["data_dir"]), _mtimes(os.path.join(first["workdir"], "checkpoints"))
  r = _run(_args(mirror, first["data_dir"], first["workdir"]))
  assert r.returncode == 0, r.stderr[-3000:]
  rec = _record(first["workdir"])
  assert {n: s["skipped"] for n, s in rec["stages"].items()} == {
      "data": True, "train": True, "eval": False, "sample": False}
  assert "[speedrun] train: " in r.stdout and "(skipped: already done)" in r.stdout
  assert len(mirror["requests"]) == first["n_requests"]  # nothing downloaded again
  after = _mtimes(first["data_dir"]), _mtimes(os.path.join(first["workdir"], "checkpoints"))
  changed = [p for b, a in zip(before, after) for p in a if b.get(p) != a[p]]
  assert all(p.endswith("stages.json") for p in changed), changed  # no token file or checkpoint rewritten
  assert rec["val_loss"] == first["record"]["val_loss"] and rec["story"] == first["record"]["story"]
  assert (rec["steps"], rec["tokens"], rec["train_s"]) == (
      first["record"]["steps"], first["record"]["tokens"], first["record"]["train_s"])


def _config(data_dir, **model_):
  config = tiny.get_config()
  config.data.dataset, config.data.dir = "tinystories", data_dir
  config.model.update({**MODEL, **model_})
  config.train.update(TRAIN)
  return config


def test_final_eval_tokens_evaluates_a_prefix(first, mirror):
  """eval_tokens=N (--final_eval_tokens) is the first N val tokens (the stated-prefix form of the metric)."""
  rec = speedrun.run(_config(first["data_dir"]), first["workdir"], eval_tokens=1000, max_new_tokens=4,
                     data_opts={"base_url": mirror["url"], "num_workers": 1})
  ref, n_tokens = _reference_val_loss(first["workdir"], first["data_dir"], 1000)
  assert rec["stages"]["train"]["skipped"]
  assert rec["val_tokens"] == n_tokens == (1000 - 1) // MODEL["context_length"] * MODEL["context_length"]
  assert rec["val_loss"] == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow  # two CLI runs with compilation, ~25 s on 2 cores
def test_ctrl_c_during_training_saves_and_the_same_command_continues(first, mirror, tmp_path):
  N = 400  # the signal comes at step 10, a few ms after the first log line
  workdir = str(tmp_path / "run")
  args = _args(mirror, first["data_dir"], workdir, train_=dict(steps=N, eval_every=N, ckpt_every=N))
  p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  for line in p.stdout:
    if line.startswith("step "):  # training has started
      p.send_signal(signal.SIGINT)
      break
  out, err = p.communicate(timeout=300)
  assert p.returncode == 130, err[-3000:]
  assert "run the same command to continue" in err
  rec = _record(workdir)
  saved = speedrun._steps(workdir)  # pylint: disable=protected-access
  assert rec["interrupted"] and rec["stopped_by"] == "SIGINT" and "val_loss" not in rec
  assert len(saved) == 1 and 0 < saved[0] < N and rec["steps"] == saved[0]
  r = _run(args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from {os.path.join(workdir, 'checkpoints', str(saved[0]))}" in r.stdout
  rec = _record(workdir)
  assert rec["stages"]["train"]["skipped"] is False and rec["steps"] == N and not rec["interrupted"]
  assert rec["val_loss"] == pytest.approx(_reference_val_loss(workdir, first["data_dir"])[0], rel=1e-5)


def test_a_finished_workdir_of_another_model_is_a_user_error(first, mirror):
  config = _config(first["data_dir"], d_model=64)
  with pytest.raises(UserError, match="another model.*new --workdir"):
    speedrun.run(config, first["workdir"], data_opts={"base_url": mirror["url"], "num_workers": 1})


def test_sample_only_flags_are_rejected_on_one_line(tmp_path):
  r = _run([sys.executable, os.path.join(ROOT, "speedrun.py"), "--config=configs/tiny.py",
            f"--workdir={tmp_path}", "--use_mla"])
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "error: --use_mla is a sample.py flag the speedrun does not use: drop it, and after the speedrun "
      "run python sample.py --workdir=WORKDIR --use_mla=..."]


@pytest.mark.slow  # BPE (vocab 512) and encoding of the 4.5 MB bundled sample: ~15 s on 2 cores
def test_bundled_sample_from_python(tmp_path):
  """speedrun.run with the default dataset of configs/tiny.py: no download at all."""
  config = tiny.get_config()
  config.data.dir = str(tmp_path / "data")
  config.model.update({**MODEL, "vocab_size": 512})
  config.train.update({**TRAIN, "steps": 20, "eval_every": 20, "ckpt_every": 20})
  rec = speedrun.run(config, str(tmp_path / "run"), data_opts={"num_workers": 2}, max_new_tokens=20)
  assert not any(s["skipped"] for s in rec["stages"].values())
  valid = open(os.path.join(data.SAMPLE_DIR, "valid.txt"), encoding="utf-8").read()
  tok = tokenizer.Tokenizer.load(os.path.join(config.data.dir, "tokenizer.json"))
  assert len(tok.encode(valid)) == data.read_meta(config.data.dir)["splits"]["val"]["n_tokens"]
  ref, n_tokens = _reference_val_loss(str(tmp_path / "run"), config.data.dir)
  assert rec["val_tokens"] == n_tokens and rec["val_loss"] == pytest.approx(ref, rel=1e-5)
  assert rec["story"].startswith(speedrun.PROMPT) and len(rec["story"]) > len(speedrun.PROMPT)
  assert rec == _record(str(tmp_path / "run"))
