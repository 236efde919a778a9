"""Trains the LM: config -> token files on the device -> jitted data-parallel AdamW steps -> workdir.

  python train.py --config=configs/tiny.py                     # CPU, bundled sample
  python train.py --config=configs/tinystories_h100.py         # the speedrun on one H100
  python train.py --config=configs/tiny.py --config.train.steps=50 --workdir=runs/try

The workdir gets checkpoints/<step>/ (Orbax), config.json, metrics.jsonl and loss.png; a rerun with
the same workdir resumes from its latest checkpoint. docs/train.md has the details (MFU formula,
eval set, resume and signal behaviour).
"""
import json
import math
import os
import signal
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np
import orbax.checkpoint as ocp

import adamw
import data
import errors
import model
import muon
from errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override fields with --config.train.steps=100 etc.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<config name>).")

# Dense (no sparsity) bf16 peak FLOP/s per device, from the vendors' spec sheets. Matched as a
# substring of jax's device_kind, first hit wins (so 'H100 PCIe' precedes 'H100').
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM: 'NVIDIA H100 80GB HBM3'
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
)


def peak_flops(device):
  """bf16 peak FLOP/s of one device, or None when unknown (CPUs: no MFU is reported)."""
  if device.platform == "cpu":
    return None
  for name, flops in PEAK_BF16_FLOPS:
    if name in device.device_kind:
      return flops
  return None


# ----------------------------------------------------------------------------- data


def load_data(config):
  """Fills config.data.tokenizer_* and a 0 vocab_size from the data dir; returns (train, val) memmaps."""
  d = config.data
  if not os.path.exists(os.path.join(d.dir, "meta.json")):
    if d.dataset != "tinystories_sample":
      raise UserError(f"no prepared dataset in {d.dir} (meta.json missing); prepare it once with: "
                      f"python data.py --dataset={d.dataset} --out_dir={d.dir}")
    print(f"preparing the bundled sample into {d.dir} (once, ~1 minute)", flush=True)
    opts = {"vocab_size": config.model.vocab_size} if config.model.vocab_size else {}
    data.prepare(d.dataset, d.dir, **opts)
  meta = data.read_meta(d.dir)
  if config.model.vocab_size == 0:
    config.model.vocab_size = meta["vocab_size"]
  elif config.model.vocab_size != meta["vocab_size"]:
    raise UserError(
        f"config.model.vocab_size={config.model.vocab_size} but {d.dir}/meta.json says the data has "
        f"vocab {meta['vocab_size']}: set --config.model.vocab_size={meta['vocab_size']} (or 0 = from "
        f"the data), or prepare the data with --vocab_size={config.model.vocab_size}")
  d.tokenizer_path = os.path.abspath(os.path.join(d.dir, "tokenizer.json"))
  d.tokenizer_sha256 = meta["tokenizer_sha256"]
  train_N, val_N = data.load_split(d.dir, "train"), data.load_split(d.dir, "val")
  T = config.model.context_length
  for name, arr in (("train", train_N), ("val", val_N)):
    if len(arr) < T + 1:
      raise UserError(f"the {name} split of {d.dir} has {len(arr)} tokens, fewer than context_length+1 "
                      f"= {T + 1}: use more text or a smaller --config.model.context_length")
  return train_N, val_N


def window_starts(data_key, step, batch_size, n_tokens, T):
  """Start offsets of the step's B windows of T+1 tokens: a pure function of (key, step), so a
  resumed run sees the same batches and the device and host paths sample identical windows."""
  key = jax.random.fold_in(data_key, step)
  return jax.random.randint(key, (batch_size,), 0, n_tokens - T, dtype=jnp.int32)


def eval_windows(val_N, T, eval_tokens, batch_size):
  """The fixed eval set: the first eval_tokens tokens of val (0 = all), cut into non-overlapping
  windows of T inputs + the next token as the last target (stride T; a partial last window is
  dropped), padded with weight-0 rows to whole batches. Returns (windows_NBT1, weight_NB)."""
  n = len(val_N) if eval_tokens <= 0 else min(eval_tokens, len(val_N))
  n_win = (n - 1) // T
  idx = np.arange(n_win)[:, None] * T + np.arange(T + 1)[None, :]
  win = np.asarray(val_N[:n_win * T + 1])[idx]
  n_batches = -(-n_win // batch_size)
  pad = n_batches * batch_size - n_win
  win = np.concatenate([win, np.zeros((pad, T + 1), win.dtype)])
  weight = np.concatenate([np.ones(n_win, np.float32), np.zeros(pad, np.float32)])
  return win.reshape(n_batches, batch_size, T + 1), weight.reshape(n_batches, batch_size)


# ----------------------------------------------------------------------------- steps


def make_train_step(config, mesh, on_device):
  """The jitted step: state -> state, metrics. on_device: its 2nd argument is the whole train split
  and the batch is sampled inside; else it is the (M, B/M, T+1) batch gathered on the host."""
  mcfg, t = config.model, config.train
  B, M, T = t.batch_size, t.microbatches, mcfg.context_length
  batch_sharding = NamedSharding(mesh, P(None, "data"))
  replicated = NamedSharding(mesh, P())

  def grads_of(params, batch_BT1):
    return jax.value_and_grad(model.loss_fn)(params, batch_BT1[:, :-1], batch_BT1[:, 1:], mcfg)

  def loss_and_grads(params, batch_MBT1):
    if M == 1:
      return grads_of(params, batch_MBT1[0])
    # gradient accumulation: equal-sized microbatches, so the mean of means is the mean
    def body(acc, batch_BT1):
      return jax.tree.map(jnp.add, acc, grads_of(params, batch_BT1)), None
    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zero, batch_MBT1)
    return loss / M, jax.tree.map(lambda g: g / M, grads)

  if mesh.size > 1:
    # Explicit data parallelism: each device differentiates the loss of its own slice of the batch
    # and one all-reduce (pmean) averages loss and gradients (equal slices: the mean of means is
    # the mean). Left to XLA's partitioner, 2 H100s ran a B128 step no faster than one (10.97 vs
    # 10.82 ms; bench/results/multi_gpu_h100x2/): the model's Triton calls (attention,
    # cross-entropy) carry no sharding rule, so every device most likely computed the whole batch.
    # check_vma=False: jax-triton's primitive has no varying-axis typing, which shard_map's checker
    # would reject inside the kernels' custom VJPs; the per-device gradients are then plain local
    # gradients, averaged explicitly here.
    local = loss_and_grads
    loss_and_grads = jax.shard_map(lambda p, b: jax.lax.pmean(local(p, b), "data"), mesh=mesh,
                                   in_specs=(P(), P(None, "data")), out_specs=P(), check_vma=False)

  def update(state, batch_MBT1):
    params, step = state["params"], state["step"]
    loss, grads = loss_and_grads(params, batch_MBT1)
    grad_norm = adamw.global_norm(grads)
    # The clipping factor goes into the update, which scales each gradient as it reads it: the
    # same values as clip_by_global_norm's, without writing the clipped gradients first.
    scale = adamw.clip_scale(grad_norm, t.grad_clip) if t.grad_clip > 0 else None
    lr = adamw.lr_at(step, lr=t.lr, warmup_steps=t.warmup_steps, total_steps=t.steps,
                     min_lr=t.min_lr, schedule=t.schedule, decay_frac=t.decay_frac)
    if _optimizer(t) == "muon":  # Muon on the hidden matrices, AdamW on the rest (muon.py)
      params, opt, param_norm = muon.update_and_norm(
          grads, state["opt"], params, lr, momentum=t.muon_momentum, nesterov=t.muon_nesterov,
          lr_scale=t.muon_lr_scale, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
          ns_dtype=MUON_NS_DTYPES[t.get("muon_ns_dtype", "float32")], grad_scale=scale,
          backend=t.get("adamw_backend", "xla"))
    else:
      params, opt, param_norm = adamw.update_and_norm(
          grads, state["opt"], params, lr, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
          mask=adamw.decay_mask(params), grad_scale=scale, backend=t.get("adamw_backend", "xla"))
    # The first step (1-based) that made the loss, gradients or params non-finite; read only at
    # sync points, so no step waits on the host for it. Checking the params (one cheap reduction,
    # or none: the Triton update sums their squares as it writes them) keeps a NaN learning rate
    # or update from reaching a checkpoint before the loss shows it.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    bad = jnp.where((state["bad_step"] < 0) & ~finite, step + 1, state["bad_step"])
    new = {"params": params, "opt": opt, "step": step + 1, "bad_step": bad, "rng": state["rng"]}
    return new, {"loss": loss, "grad_norm": grad_norm, "lr": lr}

  if on_device:
    def step_fn(state, train_N):
      rng = jax.random.wrap_key_data(state["rng"])
      start_B = window_starts(rng, state["step"], B, train_N.shape[0], T)
      start_MB = jax.lax.with_sharding_constraint(start_B.reshape(M, B // M), batch_sharding)
      batch_MBT1 = train_N[start_MB[..., None] + jnp.arange(T + 1)].astype(jnp.int32)
      return update(state, jax.lax.with_sharding_constraint(batch_MBT1, batch_sharding))
  else:
    def step_fn(state, batch_MBT1):
      return update(state, batch_MBT1.astype(jnp.int32))
  return jax.jit(step_fn, donate_argnums=0, out_shardings=replicated,
                 compiler_options=_compiler_options(t))


def make_eval_fn(config):
  """Jitted mean next-token loss over the padded eval windows (weights drop the padding rows)."""
  mcfg = config.model

  def eval_fn(params, windows_NBT1, weight_NB):
    def body(total, xs):
      win_BT1, w_B = xs
      win_BT1 = win_BT1.astype(jnp.int32)
      logits_BTV = model.forward(params, win_BT1[:, :-1], mcfg).astype(jnp.float32)
      target_BT = jnp.take_along_axis(logits_BTV, win_BT1[:, 1:, None], axis=-1)[..., 0]
      loss_B = jnp.mean(jax.nn.logsumexp(logits_BTV, axis=-1) - target_BT, axis=-1)
      return total + jnp.sum(loss_B * w_B), None
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (windows_NBT1, weight_NB))
    return total / jnp.sum(weight_NB)
  return jax.jit(eval_fn)


# ----------------------------------------------------------------------------- checkpoints


def _manager(workdir, max_to_keep=None):
  # Synchronous saves: a save is finished (and excluded from the training time) when save()
  # returns, and a background writer never competes with the steps that follow.
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False),
      item_names=("state", "meta"))


def _restore(mgr, step, abstract_state):
  """Restores (state, meta) of one step; any failure is a corrupt checkpoint the user can remove."""
  path = os.path.join(str(mgr.directory), str(step))
  try:
    if abstract_state is None:
      return None, mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out.state, out.meta
  except Exception as e:  # Orbax raises many types (ValueError, FileNotFoundError, tensorstore...)
    raise UserError(
        f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); delete that step "
        f"directory (rm -r {path}) to resume from an earlier one, or use a new --workdir") from e


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _optimizer(t):
  """config.train.optimizer; configs (and checkpoints) from before the key existed mean AdamW."""
  return t.get("optimizer", "adamw")


# How the model is computed, not what it is: a run may resume with another kernel or layer loop.
_EXECUTION_KEYS = ("attention_backend", "xent_backend", "norm_backend", "swiglu_backend", "scan_layers", "mlp_fp8",
                   "attn_fp8", "attn_fp8_dqkv", "mlp_fp8_w2", "mlp_fp8_wgrad", "mlp_fp8_wgrad_w2", "mlp_fp8_h13", "mlp_fp8_da",
                   "head_fp8")


def _model_identity(model_cfg):
  """The model config as a resume compares it: keys added since a checkpoint was saved take their
  defaults (so older runs still resume) and execution-only keys are left out."""
  full = {**model.default_model_config().to_dict(), **model_cfg}
  return {k: v for k, v in full.items() if k not in _EXECUTION_KEYS}


def _init_state(config, key):
  params = model.init_params(key, config.model)
  moments = config.train.get("moment_dtype", "float32")
  opt = muon.init(params, moments) if _optimizer(config.train) == "muon" else adamw.init(params, moments)
  return {"params": params, "opt": opt, "step": jnp.zeros((), jnp.int32),
          "bad_step": jnp.full((), -1, jnp.int32), "rng": jnp.zeros((2,), jnp.uint32)}


def load_checkpoint(workdir, step=None):
  """(params, config) of a training run's checkpoint (latest when step is None), on one device.
  config.data.tokenizer_path / tokenizer_sha256 name the tokenizer the model was trained with."""
  mgr = _manager(workdir)
  steps = mgr.all_steps()
  if not steps:
    raise UserError(f"no checkpoint in {workdir}/checkpoints: train first with "
                    f"python train.py --config=... --workdir={workdir}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise UserError(f"{workdir}/checkpoints has no step {step}; it has steps {sorted(steps)}")
  _, meta = _restore(mgr, step, None)
  config = ml_collections.ConfigDict(meta["config"])
  shapes = jax.eval_shape(lambda: _init_state(config, jax.random.key(0)))
  state, _ = _restore(mgr, step, _abstract(shapes, jax.sharding.SingleDeviceSharding(jax.devices()[0])))
  mgr.close()
  return state["params"], config


# ----------------------------------------------------------------------------- metrics


def _write_metrics(workdir, events):
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path + ".tmp", "w") as f:
    for e in events:
      f.write(json.dumps(e) + "\n")
  os.replace(path + ".tmp", path)


def _read_metrics(workdir, max_step):
  """Earlier events up to the resumed step: the later ones are recomputed, identically."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    events = [json.loads(line) for line in f if line.strip()]
  return [e for e in events if e["step"] <= max_step]


def plot_losses(workdir, events):
  """loss.png: train and val loss against tokens seen and against wall-clock seconds."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (only the plot needs it)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  tr = [e for e in events if e["event"] == "train"]
  va = [e for e in events if e["event"] == "eval"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, x, label in ((axes[0], "tokens", "tokens seen"), (axes[1], "wall_s", "wall-clock seconds")):
    ax.plot([e[x] for e in tr], [e["loss"] for e in tr], label="train", lw=1)
    ax.plot([e[x] for e in va], [e["val_loss"] for e in va], "o-", label="val", ms=3)
    ax.set_xlabel(label)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "loss.png"), dpi=100)
  plt.close(fig)


def _fmt_time(s):
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ----------------------------------------------------------------------------- the loop


OPTIMIZERS = ("adamw", "muon")
MUON_KEYS = ("muon_momentum", "muon_nesterov", "muon_lr_scale")
# muon_ns_dtype is optional (configs older than it run fp32, as before).
MUON_NS_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# How XLA orders the kernels of the step's CUDA graph (command buffer) on a GPU: 'lhs', its default,
# in the one scheduled order; 'concurrent', from their data dependencies, so kernels that do not
# depend on each other may run at once. Optional (configs older than it run 'lhs'); the CPU ignores it.
COMMAND_BUFFER_MODES = ("lhs", "concurrent")


def _compiler_options(t):
  """XLA options for the train step's jit, from config.train."""
  return {"xla_gpu_command_buffer_scheduling_mode": t.get("command_buffer_mode", "lhs").upper()}


def _compilation_cache(path):
  """Points JAX's persistent compilation cache at path ('' leaves it as it is): a rerun of the same
  config (a resume, a second seed) loads the compiled step from disk instead of compiling it again
  (the speedrun step on the H100: 37-40 s -> 0.2 s; tracing and the Triton kernels still take ~10
  s). The key is the whole program, embedded Triton binaries included, so any change to the code or
  the config's numbers compiles afresh. Returns the directory used, or None."""
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"config.train.compilation_cache_dir={path!r} cannot be created ({e}): point it "
                    "at a writable directory, or pass --config.train.compilation_cache_dir= to "
                    "compile without a cache") from e
  if jax.config.jax_compilation_cache_dir != path:
    from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
    compilation_cache.reset_cache()   # JAX opens its cache once a process; a new path needs a reset
    compilation_cache.set_cache_dir(path)
  return path


def _check_config(config, n_dev):
  t = config.train
  if t.batch_size % t.microbatches or (t.batch_size // t.microbatches) % n_dev:
    raise UserError(
        f"config.train.batch_size={t.batch_size} must split into microbatches={t.microbatches} "
        f"parts that each divide over the {n_dev} devices: choose a batch_size that is a multiple "
        f"of {t.microbatches * n_dev}")
  if t.steps < 1 or t.log_every < 1 or t.eval_every < 1 or t.ckpt_every < 1:
    raise UserError("config.train.steps, log_every, eval_every and ckpt_every must be >= 1")
  if _optimizer(t) not in OPTIMIZERS:
    raise UserError(f"config.train.optimizer={_optimizer(t)!r} is unknown: use "
                    "--config.train.optimizer=adamw or --config.train.optimizer=muon")
  missing = [k for k in MUON_KEYS if k not in t] if _optimizer(t) == "muon" else []
  if missing:
    raise UserError(f"optimizer='muon' needs config.train.{', '.join(missing)}: add them to the "
                    "config file as configs/tiny.py does")
  if t.get("adamw_backend", "xla") not in adamw.BACKENDS:
    raise UserError(f"config.train.adamw_backend={t.adamw_backend!r} is unknown: use "
                    f"{' or '.join(adamw.BACKENDS)}")
  if t.get("command_buffer_mode", "lhs") not in COMMAND_BUFFER_MODES:
    raise UserError(f"config.train.command_buffer_mode={t.command_buffer_mode!r} is unknown: use "
                    f"{' or '.join(COMMAND_BUFFER_MODES)}")
  moments = t.get("moment_dtype", "float32")
  if moments not in adamw.MOMENT_DTYPES:
    raise UserError(f"config.train.moment_dtype={moments!r} is unknown: use "
                    f"{' or '.join(adamw.MOMENT_DTYPES)}")
  if moments == "bfloat16" and min(1 - t.b1, 1 - t.b2) < adamw.MIN_BF16_STEP:
    raise UserError(f"config.train.moment_dtype='bfloat16' with b1={t.b1}, b2={t.b2}: a step changes a "
                    f"moment by 1 - b, below {adamw.MIN_BF16_STEP} bf16 rounds it away; use "
                    "--config.train.moment_dtype=float32 or b1, b2 <= 0.98")
  if t.get("muon_ns_dtype", "float32") not in MUON_NS_DTYPES:
    raise UserError(f"config.train.muon_ns_dtype={t.muon_ns_dtype!r} is unknown: use "
                    f"{' or '.join(MUON_NS_DTYPES)}")


def _maybe_init_distributed():
  """Multi-host launch (SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS set): join the other hosts."""
  env = os.environ
  multi = ("JAX_COORDINATOR_ADDRESS" in env or int(env.get("SLURM_NTASKS", "1")) > 1 or
           int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)
  if multi and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def train(config, workdir):
  """Trains config in workdir (resuming its latest checkpoint); returns the summary dict."""
  t_start = time.perf_counter()
  _maybe_init_distributed()
  config = ml_collections.ConfigDict(config.to_dict())  # a private, unlocked copy to fill in
  t = config.train
  devices = jax.devices()
  _check_config(config, len(devices))
  train_N, val_N = load_data(config)
  T, B = config.model.context_length, t.batch_size
  os.makedirs(workdir, exist_ok=True)

  mesh = Mesh(np.array(devices), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(None, "data"))
  init_key, data_key = jax.random.split(jax.random.key(t.seed))

  # Resume from the latest checkpoint, if any; else a fresh init.
  mgr = _manager(workdir, t.max_to_keep)
  shapes = jax.eval_shape(lambda: _init_state(config, init_key))
  latest = mgr.latest_step()
  prev = {"train_s": 0.0, "wall_s": 0.0}
  if latest is not None:
    # AdamW's and Muon's states differ in structure: a restore across them cannot work.
    # Checked on the saved config before the arrays are read: a restore into other shapes would
    # fail as if the checkpoint were corrupt.
    saved = _restore(mgr, latest, None)[1]["config"]
    if _model_identity(saved["model"]) != _model_identity(config.model.to_dict()):
      raise UserError(f"{workdir} holds a checkpoint of a different model ({saved['model']}); "
                      "use a new --workdir for this config, or the same config.model to resume")
    saved_opt = saved["train"].get("optimizer", "adamw")
    if saved_opt != _optimizer(t):
      raise UserError(f"{workdir} holds a checkpoint trained with optimizer={saved_opt!r}: resume with "
                      f"--config.train.optimizer={saved_opt}, or use a new --workdir for {_optimizer(t)!r}")
    state, meta = _restore(mgr, latest, _abstract(shapes, replicated))
    prev = {k: meta[k] for k in prev}
    print(f"resumed from {mgr.directory}/{latest}", flush=True)
  else:
    state = jax.jit(lambda k: _init_state(config, k), out_shardings=replicated)(init_key)
    state["rng"] = jax.device_put(jax.random.key_data(data_key), replicated)
  # Written after the resume check, so a refused resume leaves the run's config.json alone.
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2) + "\n")
  rng_host = np.asarray(state["rng"])  # the data key; state itself is donated step after step
  start = int(state["step"])
  events = _read_metrics(workdir, start)

  # The train split goes to device memory once when it fits; batches are then sampled in the step.
  on_device = train_N.nbytes <= config.data.on_device_max_mb * 2**20
  _compilation_cache(t.get("compilation_cache_dir", ""))
  step_fn = make_train_step(config, mesh, on_device)
  if on_device:
    source = jax.device_put(np.asarray(train_N), replicated)
  else:
    starts_fn = jax.jit(lambda key, step: window_starts(key, step, B, len(train_N), T))
    offsets = np.arange(T + 1)

    def host_batch(step):
      start_B = np.asarray(starts_fn(jax.random.wrap_key_data(rng_host), step))
      win = train_N[start_B[:, None] + offsets].reshape(t.microbatches, B // t.microbatches, T + 1)
      return jax.device_put(win, batch_sharding)
    source = host_batch(start)
  windows, weight = eval_windows(val_N, T, t.eval_tokens, B // t.microbatches)
  windows = jax.device_put(windows, batch_sharding)
  weight = jax.device_put(weight, batch_sharding)
  eval_fn = make_eval_fn(config)

  n_params = model.count_params(state["params"])
  fpt = model.flops_per_token(config.model, T)
  peak = peak_flops(devices[0])
  peak_total = peak * len(devices) if peak else None
  print(f"model: {n_params:,} params, {fpt / 1e6:.1f} MFLOP/token | {len(devices)} x "
        f"{devices[0].device_kind} | train {len(train_N):,} tokens ({'device' if on_device else 'host memmap'}), "
        f"eval {int(weight.sum()) * T:,} tokens | batch {B} x {T} | steps {start} -> {t.steps}", flush=True)

  # SIGINT/SIGTERM only raise a flag; the loop saves a checkpoint at the current step and returns.
  stop = {"signal": None}
  def on_signal(signum, _):
    if stop["signal"] is not None:  # a second Ctrl-C while saving: give up at once
      raise KeyboardInterrupt
    stop["signal"] = signum
  old_handlers = {}
  if threading.current_thread() is threading.main_thread():
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

  run = {"train_s": prev["train_s"], "t_sync": None, "log_steps": 0, "log_s": 0.0, "tokens_run": 0,
         "train_s_run": 0.0}
  wall0 = time.perf_counter() - prev["wall_s"]
  tokens_per_step = B * T
  step, metrics, reached, stopped_by, last_val = start, None, None, "steps", None

  def sync():
    """Waits for the dispatched steps; counts their time as training time; stops on a NaN."""
    if metrics is not None:
      jax.block_until_ready(metrics)
    now = time.perf_counter()
    dt = now - run["t_sync"]
    run["train_s"] += dt
    run["train_s_run"] += dt
    run["log_s"] += dt
    run["t_sync"] = now
    bad = int(state["bad_step"])
    if bad >= 0:
      good = mgr.latest_step()
      where = (f"the last good checkpoint {mgr.directory}/{good} is kept" if good is not None
               else "no checkpoint was written yet")
      raise UserError(f"the loss, gradients or params became NaN/inf at step {bad}; {where}. Lower "
                      "--config.train.lr or set --config.train.grad_clip, then rerun (it resumes "
                      "from the last good checkpoint)")

  def save():
    meta = {"config": config.to_dict(), "tokenizer_path": config.data.tokenizer_path,
            "tokenizer_sha256": config.data.tokenizer_sha256, "train_s": run["train_s"],
            "wall_s": time.perf_counter() - wall0}
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)), force=True)
    _write_metrics(workdir, events)  # a resume keeps the events up to its checkpoint

  def evaluate():
    nonlocal last_val
    loss = float(eval_fn(state["params"], windows, weight))
    last_val = loss
    e = {"event": "eval", "step": step, "tokens": step * tokens_per_step,
         "wall_s": time.perf_counter() - wall0, "train_s": run["train_s"], "val_loss": loss,
         "val_ppl": math.exp(min(loss, 700))}
    events.append(e)
    print(f"eval  step {step:>6} | val loss {loss:.4f} | ppl {e['val_ppl']:.2f}", flush=True)
    _write_metrics(workdir, events)
    plot_losses(workdir, events)
    return loss

  def log(m):
    tok_s = run["log_steps"] * tokens_per_step / max(run["log_s"], 1e-9)
    mfu = fpt * tok_s / peak_total if peak_total else None
    step_ms = 1e3 * run["log_s"] / run["log_steps"]
    eta = (t.steps - step) * step_ms / 1e3
    loss, lr, gnorm = float(m["loss"]), float(m["lr"]), float(m["grad_norm"])
    events.append({"event": "train", "step": step, "tokens": step * tokens_per_step,
                   "wall_s": time.perf_counter() - wall0, "train_s": run["train_s"], "loss": loss,
                   "lr": lr, "grad_norm": gnorm, "tokens_per_s": tok_s, "mfu": mfu, "step_ms": step_ms})
    mfu_s = f" | MFU {100 * mfu:4.1f}%" if mfu is not None else ""
    print(f"step {step:>6}/{t.steps} | loss {loss:.4f} | lr {lr:.2e} | gnorm {gnorm:.3f} | "
          f"{tok_s / 1e3:,.1f}k tok/s{mfu_s} | {step_ms:.1f} ms/step | ETA {_fmt_time(eta)}", flush=True)
    run["log_steps"], run["log_s"] = 0, 0.0

  try:
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, source).compile()
    compile_s = time.perf_counter() - t0
    print(f"compiled the train step in {compile_s:.1f}s", flush=True)
    run["t_sync"] = time.perf_counter()
    while step < t.steps:
      nxt = host_batch(step + 1) if not on_device and step + 1 < t.steps else None
      state, metrics = compiled(state, source)  # asynchronous: the host runs ahead of the device
      source = nxt if not on_device else source  # the next host batch was gathered meanwhile
      step += 1
      run["tokens_run"] += tokens_per_step
      run["log_steps"] += 1
      last, sig = step == t.steps, stop["signal"] is not None
      do_log = step % t.log_every == 0 or last or sig
      do_eval = step % t.eval_every == 0 or last
      do_ckpt = step % t.ckpt_every == 0 or last or sig
      if not (do_log or do_eval or do_ckpt):
        continue
      sync()  # the one wait on the device; what follows (log, eval, save) is not training time
      if do_log:
        log(jax.device_get(metrics))
      if do_eval:
        loss = evaluate()
        if t.target_val_loss > 0 and loss <= t.target_val_loss:
          reached = {"step": step, "tokens": step * tokens_per_step, "train_s": run["train_s"],
                     "total_s": time.perf_counter() - t_start}
          stopped_by, do_ckpt = "target", True
      if do_ckpt:
        save()
      if sig:
        stopped_by = signal.Signals(stop["signal"]).name
        print(f"{stopped_by}: saved a checkpoint at step {step}; rerun the same command to resume",
              flush=True)
      if sig or reached:
        break
      run["t_sync"] = time.perf_counter()
    if step == start and stop["signal"] is None:
      last_val = evaluate()  # resumed at the end: still report the final loss
    # (after a signal no eval runs: a preempted job should exit within its grace period)
    plot_losses(workdir, events)
  finally:
    _write_metrics(workdir, events)
    mgr.wait_until_finished()
    mgr.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)

  mean_tok_s = run["tokens_run"] / max(run["train_s_run"], 1e-9)
  summary = {
      "steps": step, "tokens": step * tokens_per_step, "final_val_loss": last_val,
      "final_val_ppl": math.exp(min(last_val, 700)) if last_val is not None else None,
      "stopped_by": stopped_by,
      "train_s": run["train_s"], "total_s": time.perf_counter() - t_start, "compile_s": compile_s,
      "tokens_per_s": mean_tok_s, "mfu": fpt * mean_tok_s / peak_total if peak_total else None,
      "n_params": n_params, "n_devices": len(devices), "device_kind": devices[0].device_kind,
      "target_val_loss": t.target_val_loss or None, "target_reached": reached,
      "workdir": os.path.abspath(workdir),
  }
  _print_summary(summary)
  return summary


def _print_summary(s):
  val = (f"val loss {s['final_val_loss']:.4f} (ppl {s['final_val_ppl']:.2f})"
         if s["final_val_loss"] is not None else "no eval since the last start")
  lines = [f"done: {s['steps']} steps, {s['tokens']:,} tokens ({s['stopped_by']}); {val}",
           f"time: {_fmt_time(s['train_s'])} training (compile excluded), {_fmt_time(s['total_s'])} "
           f"this run in total, {s['compile_s']:.1f}s compile | mean {s['tokens_per_s'] / 1e3:,.1f}k tok/s"
           + (f", MFU {100 * s['mfu']:.1f}%" if s["mfu"] is not None else "")]
  if s["target_reached"]:
    r = s["target_reached"]
    lines.append(f"target val loss {s['target_val_loss']} reached at step {r['step']} "
                 f"({r['tokens']:,} tokens): "
                 f"{r['train_s']:.1f}s training time (compile excluded), {r['total_s']:.1f}s total")
  elif s["target_val_loss"]:
    lines.append(f"target val loss {s['target_val_loss']} NOT reached")
  print("\n".join(lines), flush=True)


# ----------------------------------------------------------------------------- command line


def _parse_flags(argv):
  """absl parsing, with an unknown --config.* key reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    print(f"error: unknown config key among {' '.join(bad)} ({e}); the valid keys are the fields "
          "of the config file (see docs/train.md), e.g. --config.train.steps=100", file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: train.py takes only --flags")
  path = flags.FLAGS["config"].config_filename
  if not path or not os.path.exists(path.split(":")[0]):
    raise UserError(f"--config={path} is not a file: pass one of configs/*.py, e.g. --config=configs/tiny.py")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  name = os.path.splitext(os.path.basename(path.split(":")[0]))[0]
  train(_CONFIG.value, _WORKDIR.value or os.path.join("runs", name))


if __name__ == "__main__":
  app.run(errors.cli(main), flags_parser=_parse_flags)
