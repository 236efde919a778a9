"""Training throughput: tokens/s, MFU and ms/step of train.py's jitted step, side by side.

  python bench/bench_train.py                       # GPU: speedrun at batch 64/128/256 + small,
                                                    # with every attention backend that runs
  python bench/bench_train.py --profile=/tmp/trace  # also a jax.profiler trace of the first case
  python bench/bench_train.py --quick               # CPU check: tiny shapes, few steps

The step is train.make_train_step itself (on-device sampling from a random-token "train split",
clipping, AdamW, donated buffers), so the figures are what train.py runs at, compile excluded.
ms/step is the median over --repeats timings of --steps back-to-back steps after --warmup steps.
MFU = model.flops_per_token(config, T) * tokens/s / (device bf16 peak, train.PEAK_BF16_FLOPS).
On an NVIDIA GPU, nvidia-smi samples the SM clock and board power during the timed steps: the
sustained step can be power-capped (docs/model.md), and the JSON says by how much.
Writes bench/results/train_<device>.json (train_<device>_quick.json with --quick).
"""
import argparse
import collections
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=wrong-import-position

import model  # pylint: disable=wrong-import-position
import train  # pylint: disable=wrong-import-position
from configs import small, tinystories_h100  # pylint: disable=wrong-import-position

BACKENDS = ("xla", "cudnn", "triton", "cuda")
PROFILE_STEPS = 5


def cases(quick):
  """(name, config) pairs; --quick shrinks the model so every case runs in seconds on a CPU."""
  out = []
  for batch in (64, 128, 256):
    c = tinystories_h100.get_config()
    c.train.batch_size = batch
    out.append((f"speedrun B{batch}", c))
  c = tinystories_h100.get_config()
  c.model.scan_layers = True  # the layer-scan alternative, to keep the config's choice measured
  c.model.norm_backend = "xla"  # the fused add + norm kernel pairs norms across layers: no scan
  out.append(("speedrun B128 scan", c))
  c = small.get_config()
  out.append((f"small B{c.train.batch_size}", c))
  if quick:
    for name, c in out:
      c.model.update(d_model=64, n_layers=2, n_heads=4, d_ff=128, context_length=64,
                     vocab_size=512, compute_dtype="float32", xent_backend="xla",
                     norm_backend="xla", swiglu_backend="xla")  # Triton: GPU only
      c.train.adamw_backend = "xla"
      c.train.batch_size //= 16
    out = out[:2] + out[3:4]
  return out


def apply_overrides(config, items):
  """--set=section.field=value items, each parsed as the type the config already holds
  (bool/int/float/str), as config_flags would."""
  for item in items:
    key, value = item.split("=", 1)
    section, field = key.split(".")
    old = config[section][field]
    config[section][field] = (value.lower() in ("1", "true")) if isinstance(old, bool) else type(old)(value)


def step_inputs(config, mesh, train_tokens):
  """(state, random-token train split), both replicated on mesh, with fixed seeds."""
  replicated = NamedSharding(mesh, P())
  state = jax.jit(lambda k: train._init_state(config, k), out_shardings=replicated)(jax.random.key(0))  # pylint: disable=protected-access
  state["rng"] = jax.device_put(jax.random.key_data(jax.random.key(1)), replicated)
  tokens_N = jax.device_put(
      np.random.default_rng(0).integers(0, config.model.vocab_size, train_tokens, dtype=np.uint16),
      replicated)
  return state, tokens_N


def compiled_step(config, backend, mesh, train_tokens):
  """(config with the backend set, compiled train step, its state, random-token train split on the
  device, compile seconds): what train.py runs, with fixed seeds."""
  config = config.copy_and_resolve_references()
  config.model.attention_backend = backend
  state, tokens_N = step_inputs(config, mesh, train_tokens)
  t0 = time.perf_counter()
  step = train.make_train_step(config, mesh, on_device=True).lower(state, tokens_N).compile()
  return config, step, state, tokens_N, time.perf_counter() - t0


def bench_case(config, backend, mesh, args, profile_this):
  """Times one (config, backend); returns its figures, or raises whatever stopped it."""
  config, step, state, tokens_N, compile_s = compiled_step(config, backend, mesh, args.train_tokens)
  B, T = config.train.batch_size, config.model.context_length
  for _ in range(args.warmup):
    state, metrics = step(state, tokens_N)
  jax.block_until_ready(metrics)
  times = []
  sampler = _PowerSampler()
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, tokens_N)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t0) / args.steps)
  power = sampler.stop()
  if not np.isfinite(float(metrics["loss"])):
    raise FloatingPointError(f"loss {float(metrics['loss'])}")
  profile = None
  if profile_this:
    with jax.profiler.trace(args.profile):
      t0 = time.perf_counter()
      for _ in range(PROFILE_STEPS):
        state, metrics = step(state, tokens_N)
      jax.block_until_ready(metrics)
      traced_ms = 1e3 * (time.perf_counter() - t0) / PROFILE_STEPS
    args.profiled = True
    profile = summarize_trace(args.profile, PROFILE_STEPS, args.profile_top)
    if profile:
      profile["traced_wall_ms_per_step"] = traced_ms  # the host clock over the traced steps
  ms = 1e3 * float(np.median(times))
  tok_s = B * T / (ms / 1e3)
  peak = train.peak_flops(jax.devices()[0])
  fpt = model.flops_per_token(config.model, T)
  return {"ms_per_step": ms, "tokens_per_s": tok_s,
          "mfu": fpt * tok_s / (peak * len(jax.devices())) if peak else None,
          "compile_s": compile_s, "flops_per_token": fpt, "batch_size": B, "context_length": T,
          "n_params": model.count_params(state["params"]), "loss_after": float(metrics["loss"]),
          **({"gpu_power": power} if power else {}),
          **({"profile": profile} if profile else {})}


class _PowerSampler:
  """nvidia-smi's SM clock and board power every 100 ms while the timed steps run; stop() gives
  their range and mean (None where nvidia-smi is missing, as on a CPU machine)."""

  def __init__(self):
    try:
      self.proc = subprocess.Popen(
          ["nvidia-smi", "--query-gpu=index,clocks.sm,power.draw,power.limit", "--format=csv,noheader,nounits",
           "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
      self.proc = None

  def stop(self):
    if self.proc is None:
      return None
    self.proc.terminate()
    out, _ = self.proc.communicate()
    rows = []
    for line in out.splitlines():
      try:
        index, clock, power, limit = (float(x) for x in line.split(","))
      except ValueError:  # a partial last line, or "[N/A]"
        continue
      if index == 0:  # the first GPU stands for all in a data-parallel step
        rows.append((clock, power, limit))
    if not rows:
      return None
    clock, power, limit = (np.array(c) for c in zip(*rows))
    return {"samples": len(rows), "sm_clock_mhz_mean": float(clock.mean()), "sm_clock_mhz_min": float(clock.min()),
            "sm_clock_mhz_max": float(clock.max()), "power_w_mean": float(power.mean()),
            "power_w_max": float(power.max()), "power_limit_w": float(limit.max())}


def _kind(kernel):
  """Coarse class of a GPU kernel by its name (cuBLAS/CUTLASS matmuls, cuDNN attention, ...)."""
  k = kernel.lower()
  for kind, keys in (("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas")),
                     ("attention", ("fmha", "cudnn", "flash", "attention", "attn")),
                     ("triton", ("triton",)), ("copy/memset", ("memcpy", "memset", "copy")),
                     ("reduction fusion", ("reduce", "input_")), ("elementwise fusion", ("loop_", "fusion"))):
    if any(key in k for key in keys):
      return kind
  return "other"


def summarize_trace(trace_dir, n_steps, top=15):
  """Where the device time of the traced steps goes: kernel classes and the top kernels (ms/step)."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not files:
    return None
  planes = jax.profiler.ProfileData.from_file(files[-1]).planes
  by_op, by_kind, label, hlo, calls = collections.Counter(), collections.Counter(), {}, {}, collections.Counter()
  spans = []  # (start_ns, end_ns, kernel) of every kernel, for the idle time between them
  for plane in [p for p in planes if p.name.startswith("/device:")][:1]:  # data parallel: one is enough
    for line in plane.lines:
      if not line.name.startswith("Stream"):
        continue
      for e in line.events:
        # Keyed by kernel name: with CUDA graphs on, the hlo_op stat names a whole command buffer.
        ms = e.duration_ns / 1e6 / n_steps
        spans.append((e.start_ns, e.end_ns, e.name))
        by_op[e.name] += ms
        calls[e.name] += 1 / n_steps
        by_kind[_kind(e.name)] += ms
        label[e.name] = e.name[:100]
        if e.name not in hlo:  # which HLO instruction (and so which matmul) a library kernel ran
          hlo[e.name] = _hlo_stat(e)
  if not by_op:
    print("profile: no GPU kernels in the trace (a CPU trace holds only host threads)")
    return None
  total = sum(by_op.values())
  print(f"\nprofile: {total:.2f} ms of GPU kernels per step")
  for kind, ms in by_kind.most_common():
    print(f"  {100 * ms / total:5.1f}%  {ms:7.3f} ms  {kind}")
  print(f"top {top} ops:")
  for op, ms in by_op.most_common(top):
    print(f"  {100 * ms / total:5.1f}%  {ms:7.3f} ms  {label[op]}")
  idle = _idle(spans, n_steps)
  print(f"GPU idle between kernels: {idle['idle_ms_per_step']:.3f} ms per step over {idle['kernels_per_step']:.0f} "
        f"kernels ({idle['gap_us_median']:.1f} us median gap); idle before the kernels taking most:")
  for op, ms in list(idle["idle_ms_before"].items())[:8]:
    print(f"  {ms:7.3f} ms  {op[:100]}")
  return {"gpu_kernel_ms_per_step": total, **idle, "kinds_ms": dict(by_kind.most_common()),
          "timeline_one_step": _timeline(spans, n_steps),
          "top_ops_ms": {label[op]: ms for op, ms in by_op.most_common(top)},
          "top_ops_hlo": {label[op]: hlo.get(op) for op, _ in by_op.most_common(top)},
          "top_ops_calls_per_step": {label[op]: calls[op] for op, _ in by_op.most_common(top)}}


def _idle(spans, n_steps):
  """GPU time with no kernel running, from the first kernel of the trace to its last, per step, and
  which kernels wait behind the gaps (a gap is charged to the kernel that ends it)."""
  spans.sort()
  idle_ns, before, gaps = 0, collections.Counter(), []
  busy_until = spans[0][1]
  for start, end, name in spans[1:]:
    if start > busy_until:
      idle_ns += start - busy_until
      before[name[:100]] += (start - busy_until) / 1e6 / n_steps
      gaps.append(start - busy_until)
    busy_until = max(busy_until, end)
  return {"idle_ms_per_step": idle_ns / 1e6 / n_steps, "kernels_per_step": len(spans) / n_steps,
          "first_to_last_kernel_ms_per_step": (busy_until - spans[0][0]) / 1e6 / n_steps,
          "gap_us_median": float(np.median(gaps)) / 1e3 if gaps else 0.0,
          "idle_ms_before": dict(before.most_common(15))}


def _timeline(spans, n_steps):
  """The kernels of one traced step in launch order, [name, start us from the step's first kernel,
  duration us, idle us before it]: which kernel sits next to which (e.g. what a memset feeds).
  Every step launches the same kernels, so the middle step is spans[k*i : k*(i+1)]."""
  k = len(spans) // n_steps
  one = sorted(spans)[k * (n_steps // 2): k * (n_steps // 2 + 1)]
  rows, prev_end = [], one[0][0]
  for start, end, name in one:
    rows.append([name[:80], round((start - one[0][0]) / 1e3, 2), round((end - start) / 1e3, 2),
                 round(max(0, start - prev_end) / 1e3, 2)])
    prev_end = max(prev_end, end)
  return rows


def _hlo_stat(event):
  """The event's HLO op name and its long form (shapes), where the trace records them."""
  try:
    stats = dict(event.stats)
  except Exception:  # pylint: disable=broad-except  (profiler versions differ)
    return None
  return {k: str(v)[:300] for k, v in stats.items() if k in ("hlo_op", "long_name", "tf_op", "hlo_module")} or None


def _git_commit():
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return (out.stdout.strip() or "no-commit") + ("+dirty" if dirty.stdout.strip() else "")
  except OSError:
    return "unknown"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny shapes and few steps (runs on a CPU)")
  p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset to try")
  p.add_argument("--cases", default=None, help="comma-separated case names to run (e.g. 'speedrun B128')")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10; quick 2)")
  p.add_argument("--steps", type=int, default=None, help="steps per timing (default 20; quick 3)")
  p.add_argument("--repeats", type=int, default=None, help="timings, median taken (default 5; quick 2)")
  p.add_argument("--train_tokens", type=int, default=10_000_000, help="random tokens on the device")
  p.add_argument("--profile", default=None, help="write a jax.profiler trace of one case here")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for every case, e.g. --set=model.xent_backend=xla (repeatable)")
  p.add_argument("--profile_top", type=int, default=15, help="how many of the slowest kernels to list")
  p.add_argument("--profile_case", default=None, help="'case/backend' to trace (default: the first that runs)")
  p.add_argument("--out", default=None, help="JSON path (default bench/results/train_<device>.json)")
  args = p.parse_args()
  args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
  args.steps = args.steps if args.steps is not None else (3 if args.quick else 20)
  args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
  if args.quick:
    args.train_tokens = min(args.train_tokens, 100_000)
  args.profiled = False

  dev = jax.devices()[0]
  mesh = Mesh(np.array(jax.devices()), ("data",))
  print(f"{len(jax.devices())} x {dev.device_kind} ({dev.platform}); jax {jax.__version__}", flush=True)
  device = re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind).strip("_").lower()
  out = args.out or os.path.join(ROOT, "bench", "results",
                                 f"train_{device}{'_quick' if args.quick else ''}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  result = {"device": dev.device_kind, "n_devices": len(jax.devices()), "platform": dev.platform,
            "peak_bf16_flops": train.peak_flops(dev), "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats, "overrides": args.set,
            "results": []}

  def write():  # after every case, so a run cut short still leaves its figures
    with open(out, "w") as f:
      json.dump(result, f, indent=2)

  rows = result["results"]
  for name, config in cases(args.quick):
    if args.cases and name not in args.cases.split(","):
      continue
    apply_overrides(config, args.set)
    for backend in args.backends.split(","):
      row = {"case": name, "backend": backend}
      try:
        want = args.profile_case in (None, f"{name}/{backend}")
        row.update(bench_case(config, backend, mesh, args, args.profile and want and not args.profiled))
        mfu = f"{100 * row['mfu']:5.1f}%" if row["mfu"] is not None else "    -"
        pw = row.get("gpu_power")
        pw = f"  SM {pw['sm_clock_mhz_mean']:.0f} MHz, {pw['power_w_mean']:.0f}/{pw['power_limit_w']:.0f} W" if pw else ""
        print(f"{name:<14} {backend:<7} {row['ms_per_step']:8.2f} ms/step {row['tokens_per_s'] / 1e6:7.3f}M tok/s "
              f"MFU {mfu}{pw}", flush=True)
      except Exception as e:  # pylint: disable=broad-except  (a backend that cannot run here)
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print(f"{name:<14} {backend:<7} skipped: {row['error']}", flush=True)
      rows.append(row)
      write()
  print("\n| case | backend | ms/step | tokens/s | MFU |\n|---|---|---|---|---|")
  for r in rows:
    if "error" in r:
      print(f"| {r['case']} | {r['backend']} | - | - | {r['error'][:60]} |")
    else:
      mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
      print(f"| {r['case']} | {r['backend']} | {r['ms_per_step']:.2f} | {r['tokens_per_s'] / 1e6:.3f}M | {mfu} |")
  print(f"wrote {out}" + (f"; trace in {args.profile}" if args.profiled else ""))


if __name__ == "__main__":
  main()
