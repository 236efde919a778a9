"""train.py on CPU with a tiny model on a synthetic token file (written in data.py's documented format).

The data follow a rule a model can learn (x[i+1] = 3 x[i] + 1 mod V, 10% random), so a run that
works lowers the loss well below ln(V) in a few steps. One 20-step run (`base`) is the reference the
other runs are compared with: resumed, on 8 devices, with gradient accumulation, from host memory.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
import train
from configs import small, tinystories_h100, tiny
from errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 64
MODEL = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, context_length=32)
TRAIN = dict(batch_size=16, steps=20, lr=1e-2, min_lr=1e-3, warmup_steps=2, log_every=1,
             eval_every=10, ckpt_every=10, max_to_keep=3)


def _write_tokens(d, n_train=40_000, n_val=2_000, seed=0):
  """train.bin, val.bin and meta.json as data.py writes them (docs/INTERFACES.md)."""
  os.makedirs(d, exist_ok=True)
  rng = np.random.default_rng(seed)
  meta = {"format": 1, "vocab_size": V, "dtype": "uint16", "tokenizer_sha256": "0" * 64, "splits": {}}
  for split, n in (("train", n_train), ("val", n_val)):
    x = np.zeros(n, np.uint16)
    noise, rand = rng.random(n) < 0.1, rng.integers(0, V, n)
    for i in range(1, n):
      x[i] = rand[i] if noise[i] else (3 * int(x[i - 1]) + 1) % V
    x.tofile(os.path.join(d, f"{split}.bin"))
    meta["splits"][split] = {"n_tokens": n, "source_sha256": "0" * 64, "source": "synthetic"}
  with open(os.path.join(d, "meta.json"), "w") as f:
    json.dump(meta, f)
  return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return _write_tokens(str(tmp_path_factory.mktemp("tokens")))


def _config(data_dir, model_=None, **train_):
  config = tiny.get_config()
  config.data.dir, config.data.dataset = data_dir, "text"
  config.model.update({**MODEL, **(model_ or {})})
  config.train.update({**TRAIN, **train_})
  return config


def _cli(data_dir, workdir, **train_):
  """The same config as _config, through train.py's command-line overrides."""
  args = [sys.executable, os.path.join(ROOT, "train.py"), "--config=" + os.path.join(ROOT, "configs/tiny.py"),
          f"--workdir={workdir}", f"--config.data.dir={data_dir}", "--config.data.dataset=text"]
  args += [f"--config.model.{k}={v}" for k, v in MODEL.items()]
  args += [f"--config.train.{k}={v}" for k, v in {**TRAIN, **train_}.items()]
  return args


def _events(workdir, kind):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [e for e in map(json.loads, f) if e["event"] == kind]


def _losses(workdir):
  return {e["step"]: e["loss"] for e in _events(workdir, "train")}


def _params(workdir, step=None):
  params, _ = train.load_checkpoint(workdir, step)
  return jax.tree.map(np.asarray, params)


def _opt_state(data_dir, workdir, step):
  """AdamW's moments (mu, nu) of a checkpoint, restored as fp32 whatever their saved dtype."""
  shapes = jax.eval_shape(lambda k: train._init_state(_config(data_dir, {"vocab_size": 64}), k), jax.random.key(0))  # pylint: disable=protected-access
  mgr = train._manager(workdir)  # pylint: disable=protected-access
  state, _ = train._restore(mgr, step, train._abstract(shapes, jax.sharding.SingleDeviceSharding(jax.devices()[0])))  # pylint: disable=protected-access
  mgr.close()
  return state["opt"]["mu"], state["opt"]["nu"]


def _assert_trees_close(a, b, rtol, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("base"))
  return workdir, train.train(_config(data_dir), workdir)


# ----------------------------------------------------------------------------- configs


def test_configs_have_the_documented_shapes():
  c = tinystories_h100.get_config()
  assert (c.model.vocab_size, c.model.context_length, c.model.d_model, c.model.n_layers,
          c.model.n_heads, c.model.d_ff, c.model.compute_dtype, c.train.target_val_loss) == (
              10_000, 256, 512, 4, 16, 1344, "bfloat16", 1.45)
  s = small.get_config()
  assert (s.model.d_model, s.model.n_layers, s.model.n_heads, s.model.d_ff) == (768, 12, 12, 3072)
  t = tiny.get_config()
  assert (t.model.d_model, t.model.n_layers, t.model.n_heads, t.model.d_ff, t.model.compute_dtype) == (
      128, 4, 4, 512, "float32")
  # Every config carries every field model.py reads.
  for cfg in (c, s, t):
    assert set(model.default_model_config().keys()) <= set(cfg.model.keys())


def test_unknown_config_key_is_rejected_with_a_clear_message(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config=configs/tiny.py",
                      "--config.train.bogus_key=1", f"--workdir={tmp_path}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert "bogus_key" in r.stderr and "unknown config key" in r.stderr
  assert "Traceback" not in r.stderr
  assert not os.listdir(tmp_path)  # nothing started


def test_missing_data_names_the_prepare_command(tmp_path):
  config = _config(str(tmp_path / "nothing_here"))
  config.data.dataset = "tinystories"
  with pytest.raises(UserError, match=r"python data.py --dataset=tinystories --out_dir=.*nothing_here"):
    train.train(config, str(tmp_path / "run"))


def test_unknown_command_buffer_mode_names_the_choices(data_dir, tmp_path):
  config = _config(data_dir)
  config.train.command_buffer_mode = "parallel"
  with pytest.raises(UserError, match=r"command_buffer_mode='parallel' is unknown: use lhs or concurrent"):
    train.train(config, str(tmp_path))


def test_the_step_hands_the_command_buffer_mode_to_xla(data_dir):
  """The mode reaches the step's compile: 'concurrent' compiles, and a value that skipped the
  config check is refused by XLA's own option parser, which only sees it if it was passed."""
  config = _config(data_dir, {"vocab_size": 64})
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  state = jax.eval_shape(lambda k: train._init_state(config, k), jax.random.key(0))  # pylint: disable=protected-access
  tokens_N = jax.ShapeDtypeStruct((10_000,), np.uint16)
  config.train.command_buffer_mode = "concurrent"
  train.make_train_step(config, mesh, on_device=True).lower(state, tokens_N).compile()
  config.train.command_buffer_mode = "parallel"
  with pytest.raises(Exception, match="xla_gpu_command_buffer_scheduling_mode"):
    train.make_train_step(config, mesh, on_device=True).lower(state, tokens_N).compile()


def test_moment_dtype_is_checked_against_the_choices_and_the_betas(data_dir, tmp_path):
  with pytest.raises(UserError, match=r"moment_dtype='float16' is unknown: use float32 or bfloat16"):
    train.train(_config(data_dir, moment_dtype="float16"), str(tmp_path))
  # b2 = 0.99 moves v by 1% a step, which bf16's round-to-nearest would lose near g^2 = v.
  with pytest.raises(UserError, match=r"b2=0.99.*--config.train.moment_dtype=float32 or b1, b2 <= 0.98"):
    train.train(_config(data_dir, moment_dtype="bfloat16", b2=0.99), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_vocab_size_must_match_the_data(data_dir, tmp_path):
  with pytest.raises(UserError, match=r"vocab_size=100 .* vocab 64"):
    train.train(_config(data_dir, {"vocab_size": 100}), str(tmp_path))


# ----------------------------------------------------------------------------- a run


@pytest.mark.slow
def test_short_run_learns_and_writes_its_files(base, data_dir):
  workdir, summary = base
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 21))
  assert np.mean([losses[s] for s in range(16, 21)]) < losses[1] - 1.5
  evals = _events(workdir, "eval")
  assert [e["step"] for e in evals] == [10, 20]
  assert evals[-1]["val_loss"] < evals[0]["val_loss"] < math.log(V) - 1.0
  assert summary["final_val_loss"] == evals[-1]["val_loss"] and summary["steps"] == 20
  assert summary["tokens"] == 20 * 16 * 32 == evals[-1]["tokens"]
  with open(os.path.join(workdir, "loss.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["vocab_size"] == V  # 0 in tiny.py: taken from meta.json
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  params, config = train.load_checkpoint(workdir)
  assert config.model.d_model == 32 and config.data.tokenizer_sha256 == "0" * 64


@pytest.mark.slow
def test_val_loss_is_the_mean_over_all_non_overlapping_val_windows(base, data_dir):
  """Reference: model.loss_fn on each window of the val split, one at a time, averaged."""
  workdir, summary = base
  params, config = train.load_checkpoint(workdir)
  val = np.fromfile(os.path.join(data_dir, "val.bin"), np.uint16).astype(np.int32)
  T = MODEL["context_length"]
  loss_fn = jax.jit(lambda p, x, y: model.loss_fn(p, x, y, config.model))
  losses = [loss_fn(params, val[None, i:i + T], val[None, i + 1:i + T + 1])
            for i in range(0, len(val) - T, T)]
  assert len(losses) == (2000 - 1) // T  # 62 windows: the batch of 16 is padded on the last one
  np.testing.assert_allclose(summary["final_val_loss"], np.mean(losses), rtol=1e-5)


@pytest.mark.slow
def test_resume_gives_the_same_losses_and_params(base, data_dir, tmp_path):
  workdir, _ = base
  shutil.copytree(os.path.join(workdir, "checkpoints", "10"), tmp_path / "checkpoints" / "10")
  summary = train.train(_config(data_dir), str(tmp_path))  # resumes at 10, runs 11..20
  assert summary["steps"] == 20
  ref, got = _losses(workdir), _losses(str(tmp_path))
  assert sorted(got) == list(range(11, 21))
  np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-6)
  _assert_trees_close(_params(str(tmp_path)), _params(workdir), rtol=1e-6, atol=1e-7)


def test_bf16_moments_resume_a_float32_checkpoint_and_track_its_losses(base, data_dir, tmp_path):
  """A run may switch its moments to bf16 on resume (the restore casts them); the next ten steps'
  losses stay within 1% of the fp32 run's, and the checkpoint it saves holds bf16 moments."""
  workdir, _ = base
  shutil.copytree(os.path.join(workdir, "checkpoints", "10"), tmp_path / "checkpoints" / "10")
  assert train.train(_config(data_dir, moment_dtype="bfloat16"), str(tmp_path))["steps"] == 20
  ref, got = _losses(workdir), _losses(str(tmp_path))
  assert sorted(got) == list(range(11, 21))
  np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-2)
  assert [got[s] for s in got] != [ref[s] for s in got]   # the rounding is really there
  # Read back through an fp32 template: every moment of the bf16 run is a bf16 value, where the
  # fp32 run's are not.
  for run, rounded in ((str(tmp_path), True), (workdir, False)):
    mu_nu = [np.asarray(x, np.float32) for x in jax.tree.leaves(_opt_state(data_dir, run, 20))]
    as_bf16 = [x.astype(jnp.bfloat16).astype(np.float32) for x in mu_nu]
    assert all(np.array_equal(a, b) for a, b in zip(mu_nu, as_bf16)) == rounded


@pytest.mark.slow
def test_resume_refuses_another_model_but_not_another_layer_loop(base, data_dir, tmp_path):
  workdir, _ = base
  for name in ("other", "scan"):
    shutil.copytree(os.path.join(workdir, "checkpoints", "10"), tmp_path / name / "checkpoints" / "10")
  with pytest.raises(UserError, match="different model"):
    train.train(_config(data_dir, {"d_ff": 2 * MODEL["d_ff"]}), str(tmp_path / "other"))
  assert not os.path.exists(tmp_path / "other" / "config.json")   # the refused run wrote nothing
  # scan_layers (like the attention/xent backends) changes how the model runs, not the model.
  assert train.train(_config(data_dir, {"scan_layers": True}), str(tmp_path / "scan"))["steps"] == 20
  ref, got = _losses(workdir), _losses(str(tmp_path / "scan"))
  np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-4)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch(base, data_dir, tmp_path):
  """2 microbatches of 8 = one batch of 16 (same windows, sampled before the split)."""
  workdir, _ = base
  train.train(_config(data_dir, microbatches=2), str(tmp_path))
  ref, got = _losses(workdir), _losses(str(tmp_path))
  np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=1e-5)
  _assert_trees_close(_params(str(tmp_path)), _params(workdir), rtol=1e-4, atol=1e-6)


@pytest.fixture
def compile_cache_events():
  """The names of JAX's monitoring events while a test runs; JAX's persistent compilation cache is
  switched off again afterwards, so later tests compile as before."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
  events = []
  listener = lambda name, **_: events.append(name)  # pylint: disable=unnecessary-lambda-assignment
  jax.monitoring.register_event_listener(listener)
  min_s = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the tiny step compiles in < 1 s
  try:
    yield events
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_s)
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    jax.monitoring.unregister_event_listener(listener)


def test_compilation_cache_serves_a_rerun_with_the_same_losses(base, data_dir, tmp_path, compile_cache_events):
  """train.compilation_cache_dir: the first run writes its compiled programs there, a rerun of the
  config (a new workdir) loads them from disk (JAX reports cache hits), and both train exactly as
  the base run compiled without a cache."""
  workdir, ref = base
  cache = tmp_path / "no" / "such" / "dir"   # made by train
  config = _config(data_dir, compilation_cache_dir=str(cache))
  first = train.train(config, str(tmp_path / "first"))
  assert os.listdir(cache)
  hits = compile_cache_events.count("/jax/compilation_cache/cache_hits")
  second = train.train(config, str(tmp_path / "second"))
  assert compile_cache_events.count("/jax/compilation_cache/cache_hits") > hits
  for run in ("first", "second"):
    assert _losses(str(tmp_path / run)) == _losses(workdir)
  assert first["final_val_loss"] == second["final_val_loss"] == ref["final_val_loss"]


def test_unwritable_compilation_cache_dir_names_the_key_and_the_fix(data_dir, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(UserError, match="compilation_cache_dir.*--config.train.compilation_cache_dir="):
    train.train(_config(data_dir, compilation_cache_dir=str(blocker / "cache")), str(tmp_path / "w"))


@pytest.mark.slow
def test_host_memmap_batches_equal_device_batches(base, data_dir, tmp_path):
  workdir, _ = base
  config = _config(data_dir)
  config.data.on_device_max_mb = 0  # the train split no longer "fits": windows come from the host
  train.train(config, str(tmp_path))
  ref, got = _losses(workdir), _losses(str(tmp_path))
  np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=1e-6)


@pytest.mark.slow
def test_eight_devices_give_the_same_losses_as_one(base, data_dir, tmp_path):
  workdir, _ = base
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  r = subprocess.run(_cli(data_dir, str(tmp_path)), cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "8 x cpu" in r.stdout
  ref, got = _losses(workdir), _losses(str(tmp_path))
  assert sorted(got) == sorted(ref)
  # Only the order of the cross-device sums differs.
  np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=2e-5)


_DATA_PARALLEL_CHECK = """
import jax, jax.numpy as jnp, numpy as np
import jax.extend as jex
from jax._src import core
from jax.interpreters import mlir
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import model, train
from configs import tiny

# An identity op built like jax-triton's kernel call: a bare primitive with no sharding rule and no
# varying-axis typing, inside a custom VJP, as our Triton attention and cross-entropy are.
prim = jex.core.Primitive("opaque_identity")
prim.def_abstract_eval(lambda x: core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(prim, mlir.lower_fun(lambda x: x, multiple_results=False))
opaque = jax.custom_vjp(lambda x: prim.bind(x))
opaque.defvjp(lambda x: (prim.bind(x), None), lambda _, g: (prim.bind(g),))

seen = []
loss_fn = model.loss_fn
def patched(params, x_BT, y_BT, cfg):
  seen.append(x_BT.shape[0])
  return opaque(loss_fn(params, x_BT, y_BT, cfg))
model.loss_fn = patched

c = tiny.get_config()
c.model.vocab_size, c.train.batch_size = 64, 16
tokens_np = np.arange(5000, dtype=np.uint16) % 61
out = {}
for m_ in (1, 2):  # microbatches: 2 accumulates on each device before the one all-reduce
  c.train.microbatches = m_
  for n in (1, 8):
    mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
    rep = NamedSharding(mesh, P())
    state = jax.jit(lambda k: train._init_state(c, k), out_shardings=rep)(jax.random.key(0))
    state["rng"] = jax.device_put(jax.random.key_data(jax.random.key(1)), rep)
    _, m = train.make_train_step(c, mesh, on_device=True)(state, jax.device_put(tokens_np, rep))
    out[m_, n] = (float(m["loss"]), float(m["grad_norm"]))
print("SEEN", seen, "OUT", out)
for m_ in (1, 2):
  np.testing.assert_allclose(out[m_, 8], out[1, 1], rtol=1e-5)
"""


@pytest.mark.slow
def test_each_device_differentiates_only_its_slice_of_the_batch():
  """With 8 devices the loss must be traced on B/8 sequences, not on the whole batch, even around
  an op with no sharding rule (our Triton kernels: on 2 H100s the step that left the split to XLA
  ran no faster than on one GPU), and the averaged loss and gradient norm must equal one device's,
  with and without gradient accumulation."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  r = subprocess.run([sys.executable, "-c", _DATA_PARALLEL_CHECK], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  # one device: 16 sequences; eight: 16 / 8; then 2 microbatches: 8 on one device, 1 on each of 8
  assert "SEEN [16, 2, 8, 1]" in r.stdout, r.stdout[-500:]


# ----------------------------------------------------------------------------- stopping


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(base, data_dir, tmp_path):
  workdir, _ = base
  shutil.copytree(os.path.join(workdir, "checkpoints", "10"), tmp_path / "checkpoints" / "10")
  config = _config(data_dir, lr=float("nan"), ckpt_every=1, log_every=5, eval_every=100)
  # Step 11 applies a NaN learning rate: its loss is finite, the params it leaves are not.
  with pytest.raises(UserError, match=r"NaN/inf at step 11;.*checkpoints/10 is kept"):
    train.train(config, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["10"]
  params = _params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_target_val_loss_stops_at_the_first_eval_that_reaches_it(data_dir, tmp_path):
  target = 3.0
  summary = train.train(_config(data_dir, steps=200, eval_every=4, target_val_loss=target),
                        str(tmp_path))
  evals = _events(str(tmp_path), "eval")
  assert summary["stopped_by"] == "target" and summary["steps"] < 200
  assert evals[-1]["val_loss"] <= target < min(e["val_loss"] for e in evals[:-1])
  assert summary["target_reached"]["step"] == summary["steps"] == evals[-1]["step"]
  assert 0 < summary["target_reached"]["train_s"] <= summary["target_reached"]["total_s"]
  assert str(summary["steps"]) in os.listdir(tmp_path / "checkpoints")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dir, tmp_path):
  proc = subprocess.Popen(_cli(data_dir, str(tmp_path), steps=100_000, eval_every=100_000,
                               ckpt_every=100_000), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  watchdog = threading.Timer(240, proc.kill)
  watchdog.start()
  try:
    for line in proc.stdout:
      if line.startswith("step"):  # training has started
        proc.send_signal(signal.SIGTERM)
        break
    out, err = proc.communicate()
  finally:
    watchdog.cancel()
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM: saved a checkpoint at step" in out
  saved = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
  assert os.listdir(tmp_path / "checkpoints") == [str(saved)]
  _, config = train.load_checkpoint(str(tmp_path))
  assert config.model.d_model == 32 and config.train.steps == 100_000  # the overrides took effect


def test_corrupt_checkpoint_names_the_path_and_the_fix(base, data_dir, tmp_path):
  workdir, _ = base
  shutil.copytree(os.path.join(workdir, "checkpoints", "10"), tmp_path / "checkpoints" / "10")
  state_dir = tmp_path / "checkpoints" / "10" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(UserError, match=r"checkpoints/10 cannot be read.*rm -r .*checkpoints/10"):
    train.train(_config(data_dir), str(tmp_path))


def test_eval_windows_are_the_documented_prefix_windows():
  val = np.arange(100, dtype=np.uint16)
  win_NBT1, weight_NB = train.eval_windows(val, T=8, eval_tokens=50, batch_size=4)
  # Tokens 0..49: windows [0..8], [8..16], ..., [40..48]; the partial [48..49] is dropped.
  expected = [list(range(i, i + 9)) for i in range(0, 41, 8)]
  rows, w = win_NBT1.reshape(-1, 9), weight_NB.reshape(-1)
  assert win_NBT1.shape == (2, 4, 9) and w.tolist() == [1] * 6 + [0] * 2
  assert rows[:6].tolist() == expected
  whole, _ = train.eval_windows(val, T=8, eval_tokens=0, batch_size=4)  # 0 = the whole split
  assert whole.reshape(-1, 9)[:12].tolist() == [list(range(i, i + 9)) for i in range(0, 89, 8)]


def test_resume_identity_ignores_how_the_model_is_computed():
  """A run may resume with other kernels or the FP8 MLP switched (execution keys), never with
  another model shape."""
  base = model.default_model_config().to_dict()
  ident = train._model_identity(base)  # pylint: disable=protected-access
  assert train._model_identity({**base, "mlp_fp8": True, "attn_fp8": True, "mlp_fp8_w2": True,  # pylint: disable=protected-access
                                "mlp_fp8_wgrad": True, "mlp_fp8_wgrad_w2": True, "mlp_fp8_h13": True, "mlp_fp8_da": True,
                                "head_fp8": True, "attn_fp8_dqkv": True,
                                "norm_backend": "triton",
                                "scan_layers": True}) == ident
  assert train._model_identity({**base, "d_ff": 1024}) != ident  # pylint: disable=protected-access


@pytest.mark.parametrize("name,mlp_fp8,attn_fp8,fp8_w2,wgrad,head,wgrad_w2,h13", [
    ("speedrun", False, False, True, True, False, True, False), ("speedrun", True, False, False, False, False, False, False),
    ("speedrun", True, True, False, False, False, False, False), ("speedrun", True, True, True, False, False, False, False),
    ("speedrun", True, True, True, True, False, False, False), ("speedrun", True, True, True, True, True, False, False),
    ("speedrun", True, True, True, False, True, True, False), ("speedrun", True, True, True, True, True, True, False),
    ("speedrun", True, False, False, False, True, True, False), ("speedrun", False, False, False, False, True, False, False),
    ("speedrun", True, True, True, True, True, True, True), ("speedrun", True, False, False, False, False, False, True),
    ("speedrun", True, True, True, True, True, True, "da"),
    ("small", False, False, False, False, False, False, False)])
def test_every_triton_kernel_of_the_gpu_configs_compiles_for_hopper(monkeypatch, name, mlp_fp8, attn_fp8, fp8_w2,
                                                                    wgrad, head, wgrad_w2, h13):
  """The train step of a GPU config, traced on this machine with each Triton launch replaced by a
  compile for sm_90 (tests/hopper_compile.py): every kernel the step launches on the H100 compiles,
  within the SM's shared memory. A kernel that only a GPU run would reject fails here, on the CPU.
  The speedrun runs the FP8 MLP; configs/small.py (other head and MLP widths) the bf16 one."""
  pytest.importorskip("triton")
  import hopper_compile  # pylint: disable=import-outside-toplevel
  compiler = hopper_compile.patch(monkeypatch)
  config = (tinystories_h100 if name == "speedrun" else small).get_config()
  assert config.model.mlp_fp8 == (name == "speedrun")   # the configs' choices, as documented
  # The sequential block's FP8 combinations; the speedrun's parallel block has its own test below.
  config.model.parallel_block = False
  config.model.mlp_fp8, config.model.attn_fp8, config.model.mlp_fp8_w2 = mlp_fp8, attn_fp8, fp8_w2
  config.model.mlp_fp8_wgrad, config.model.head_fp8, config.model.mlp_fp8_wgrad_w2 = wgrad, head, wgrad_w2
  config.model.mlp_fp8_h13, config.model.mlp_fp8_da = bool(h13), h13 == "da"   # "da": both
  config.model.attn_fp8_dqkv = attn_fp8   # as in the speedrun config: x Wqkv's backward in FP8 with its forward
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  state = jax.eval_shape(lambda k: train._init_state(config, k), jax.random.key(0))  # pylint: disable=protected-access
  tokens_N = jax.ShapeDtypeStruct((1_000_000,), np.uint16)
  jax.eval_shape(train.make_train_step(config, mesh, on_device=True), state, tokens_N)
  names = {name for name, _ in compiler.compiled}
  # The launches the config asks for (attention, RoPE, norms, SwiGLU, loss), each way.
  # The FP8 MLP's backward takes every add+norm backward to the FP8 entry point (flags off or on).
  # With act x W2 in FP8, the MLP's gate runs in Triton and its output meets the stream row-scaled.
  # (and AdamW's update, train.adamw_backend='triton' in both configs)
  expected = {"xent_fwd_kernel", "adamw_kernel"}
  # RoPE: q and k rotated in one pass before the forward.
  expected |= {"fwd_kernel", "rope_qk_kernel"}
  # With attn_fp8_dqkv the attention's backward stores e5m2 dQKV for x Wqkv's FP8 backward dots, and
  # h8's token-last copy for the weight gradient is one transpose_fp8 pass.
  expected |= ({"bwd_dkdv_rope_fp8_kernel", "bwd_dq_rope_fp8_kernel", "transpose_fp8_kernel"} if attn_fp8
               else {"bwd_dkdv_rope_kernel", "bwd_dq_rope_kernel"})
  # mlp_fp8_w2 without mlp_fp8 does nothing (the bf16 MLP).
  expected |= {"swiglu_fwd_fp8_kernel"} if fp8_w2 and mlp_fp8 else set()
  # The add + norm after each MLP: with the FP8 MLP it writes the next e4m3 input where one is
  # wanted (the next attention's with attn_fp8; after the last layer the head's with head_fp8),
  # else it only takes the W2 dot's row scales (fp8_w2) or is the plain add + norm.
  without_copy = "add_norm_fwd_scaled_kernel" if fp8_w2 and mlp_fp8 else "add_norm_fwd_kernel"
  for wants_copy in (attn_fp8, head):   # the layers before the last (the configs have several), the last
    expected |= {"add_norm_fwd_fp8_kernel" if wants_copy and mlp_fp8 else without_copy}
  expected |= ({"add_norm_fwd_fp8_kernel", "add_norm_bwd_fp8_kernel", "swiglu_bwd_fp8_kernel"} if mlp_fp8
               else {"add_norm_bwd_kernel", "swiglu_bwd_kernel"})
  # W13's e4m3 weight gradient transposes its two operands token-last (nothing without mlp_fp8), and
  # so does W2's (nothing without mlp_fp8_w2 either: it reads the SwiGLU forward's e4m3 act).
  expected |= {"transpose_fp8_kernel"} if (wgrad or (wgrad_w2 and fp8_w2)) and mlp_fp8 else set()
  # The first layer's norm (no add before it) runs the no-add forward, e4m3 copy included with
  # attn_fp8, and a backward that adds the lookup's gradient into the table's (EMBED_GRAD_IN_FIRST_NORM).
  expected |= {"embed_norm_bwd_kernel"} | ({"add_norm_fwd_fp8_kernel"} if attn_fp8 else {"add_norm_fwd_kernel"})
  assert names == expected, (sorted(expected - names), sorted(names - expected))
  too_big = [(n, s) for n, s in compiler.compiled if s > hopper_compile.SM90_SHARED_BYTES]
  assert not too_big, too_big


def test_parallel_block_step_compiles_for_hopper_with_one_norm_a_layer(monkeypatch):
  """The speedrun config with parallel_block: every kernel its step launches compiles for sm_90, and
  each layer has one add + norm each way (add_norm_fwd_par_kernel after both halves; the first
  layer's norm, the lookup's backward), where the sequential block has two; the norm backward
  kernels apply x Wqkv's 2^-k where an attention read h (all but the last, which feeds the head).
  With the hand-off (fp8_mlp.PARALLEL_HANDOFF) the first norm is the parallel kernel's no-add form,
  the norms that an attention reads take the next MLP's share of h's gradient as a second input,
  and write no bf16 h (PARALLEL_H_UNWRITTEN): only the last one does, for the head. With
  PARALLEL_W13_STATIC_H a layer has one token-last copy fewer."""
  pytest.importorskip("triton")
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  import hopper_compile  # pylint: disable=import-outside-toplevel
  compiler = hopper_compile.patch(monkeypatch)
  counts = {}
  call = compiler.triton_call

  def counting(*args, kernel, **kw):
    counts[kernel.__name__] = counts.get(kernel.__name__, 0) + 1
    return call(*args, kernel=kernel, **kw)

  monkeypatch.setattr(compiler, "triton_call", counting)
  config = tinystories_h100.get_config()
  assert config.model.parallel_block   # the speedrun config's choice
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  state = jax.eval_shape(lambda k: train._init_state(config, k), jax.random.key(0))  # pylint: disable=protected-access
  assert "mlp_norm" not in state["params"]["blocks"]
  L = config.model.n_layers
  mul = 2.0 ** -(attention_kernel.DQKV_LOG2 + 15)   # N = 128 x 256 = 2^15 tokens

  def step(**switches):   # the step traced under fp8_mlp's switches: (launch counts, distinct compiles' constants)
    for name, value in switches.items():
      monkeypatch.setattr(fp8_mlp, name, value)
    counts.clear()
    seen = len(compiler.constants)
    jax.eval_shape(train.make_train_step(config, mesh, on_device=True), state,
                   jax.ShapeDtypeStruct((1_000_000,), np.uint16))
    return dict(counts), compiler.constants[seen:]

  got, _ = step(PARALLEL_HANDOFF=False)
  assert got["add_norm_fwd_par_kernel"] == L and got["add_norm_fwd_fp8_kernel"] == 1, got
  assert got["add_norm_bwd_fp8_kernel"] == L and got["embed_norm_bwd_kernel"] == 1, got
  consts = compiler.constants   # (one entry per distinct compile: the middle layers' are alike)
  dh = {(n, c["DH_MUL"], c.get("HAS_DH2", False)) for n, c in consts if "DH_MUL" in c}
  assert dh == {("embed_norm_bwd_kernel", mul, False), ("add_norm_bwd_fp8_kernel", mul, False),
                ("add_norm_bwd_fp8_kernel", 1.0, False)}, dh
  got, _ = step(PARALLEL_HANDOFF=True)
  assert got["add_norm_fwd_par_kernel"] == L + 1 and "add_norm_fwd_fp8_kernel" not in got, got
  assert got["add_norm_bwd_fp8_kernel"] == L and got["embed_norm_bwd_kernel"] == 1, got
  dh = {(n, c["DH_MUL"], c.get("HAS_DH2", False)) for n, c in compiler.constants if "DH_MUL" in c}
  assert {("embed_norm_bwd_kernel", mul, True), ("add_norm_bwd_fp8_kernel", mul, True)} <= dh, dh
  fwd = {(c["HAS_Y"], c["WRITE_H"]) for n, c in compiler.constants if n == "add_norm_fwd_par_kernel"}
  assert {(False, False), (True, False), (True, True)} <= fwd, fwd   # the first norm, the middle ones, the last
  # W13's weight gradient on h's static copy: dH13's token-last copy from its e4m3 bytes, rescaled
  # by rows (transpose_fp8's X8), and no scaled copy of h.
  static, new = step(PARALLEL_HANDOFF=True, PARALLEL_W13_STATIC_H=True)
  assert static["transpose_fp8_kernel"] == got["transpose_fp8_kernel"] - L, (static, got)
  assert any(n == "transpose_fp8_kernel" and c["X8"] for n, c in new), new
  too_big = [(n, s) for n, s in compiler.compiled if s > hopper_compile.SM90_SHARED_BYTES]
  assert not too_big, too_big


def test_norm_kernels_taking_dh_scale_compile_for_hopper(monkeypatch):
  """attention_kernel.DH_SCALE='norm' on the speedrun config: the norm backward kernels that apply x
  Wqkv's 2^-k to h's gradient as a constant (DH_MUL) compile for sm_90, and the step asks for them
  where an attention reads h (the first norm's, whose backward is the lookup's, and every sublayer's
  second norm but the last one's, which feeds the head) and nowhere else."""
  pytest.importorskip("triton")
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import hopper_compile  # pylint: disable=import-outside-toplevel
  compiler = hopper_compile.patch(monkeypatch)
  monkeypatch.setattr(attention_kernel, "DH_SCALE", "norm")
  config = tinystories_h100.get_config()
  assert config.model.attn_fp8_dqkv and config.model.mlp_fp8
  config.model.parallel_block = False   # the sequential block's norms (the parallel one: the test above)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  state = jax.eval_shape(lambda k: train._init_state(config, k), jax.random.key(0))  # pylint: disable=protected-access
  jax.eval_shape(train.make_train_step(config, mesh, on_device=True), state, jax.ShapeDtypeStruct((1_000_000,), np.uint16))
  mul = 2.0 ** -(attention_kernel.DQKV_LOG2 + 15)   # N = 128 x 256 = 2^15 tokens
  got = {(n, c["DH_MUL"]) for n, c in compiler.constants if "DH_MUL" in c}
  assert got == {("embed_norm_bwd_kernel", mul), ("add_norm_bwd_fp8_kernel", mul), ("add_norm_bwd_fp8_kernel", 1.0)}, got
  too_big = [(n, s) for n, s in compiler.compiled if s > hopper_compile.SM90_SHARED_BYTES]
  assert not too_big, too_big
