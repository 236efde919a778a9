"""Data-parallel scaling on the GPUs of one host: train.py's step on 1, 2, 4, 8 devices.

  python bench/bench_scaling.py                 # GPU: every power of two up to the GPUs visible
  python bench/bench_scaling.py --quick         # CPU check: tiny shapes on 1..8 host devices

For each device count n it runs bench/bench_train.py in its own process on the first n devices
(CUDA_VISIBLE_DEVICES=0..n-1; with --quick, --xla_force_host_platform_device_count=n) twice:
- weak scaling: the same per-device batch (global batch = base_batch x n);
- strong scaling: the same global batch (base_batch, so base_batch / n per device).
Efficiency is tokens/s on n devices / (n x tokens/s on one device) in both cases. In the strong
case every run sees the same batches from the same initial state, so its loss after the timed
steps must match the one-device run up to the order of the cross-device sums: that column checks
that the devices really split the batch and average the gradients.
Writes bench/results/scaling_<device>[_quick].json; docs/train.md explains the data parallelism.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_names():
  """The GPUs nvidia-smi lists (without importing jax here, which would take GPU memory)."""
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.TimeoutExpired):
    return []
  return re.findall(r"GPU \d+: (.+?) \(UUID", out)


def run_one(n, batch, args):
  """bench_train.py's figures for one (device count, global batch), or an 'error' entry."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if args.quick:
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
  else:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n))
    env.setdefault("NCCL_NVLS_ENABLE", "0")
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "r.json")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_train.py"), f"--cases={args.case}",
           f"--backends={args.backend}", f"--set=train.batch_size={batch}", f"--out={out}",
           f"--warmup={args.warmup}", f"--steps={args.steps}", f"--repeats={args.repeats}"]
    cmd += ["--quick"] if args.quick else []
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if not os.path.exists(out):
      return {"error": (r.stderr or r.stdout)[-800:]}
    with open(out) as f:
      res = json.load(f)
  row = res["results"][0]
  if "error" in row or not row.get("ms_per_step"):
    return {"error": str(row.get("error", "no timing"))[-800:]}
  assert res["n_devices"] == n, (res["n_devices"], n)
  return {"devices": res["device"], "ms_per_step": row["ms_per_step"], "tokens_per_s": row["tokens_per_s"],
          "mfu_per_device": row["mfu"], "loss_after": row["loss_after"], "compile_s": row["compile_s"]}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="CPU host devices and tiny shapes")
  p.add_argument("--max_devices", type=int, default=None, help="largest device count (default: all GPUs; quick: 8)")
  p.add_argument("--base_batch", type=int, default=None, help="sequences per device in the weak case "
                 "and in all in the strong case (default 128; quick 8)")
  p.add_argument("--case", default="speedrun B128", help="bench_train.py case whose model and config to use")
  p.add_argument("--backend", default="triton", help="attention backend (bench_train.py --backends)")
  p.add_argument("--warmup", type=int, default=None, help="default 3 (quick 2)")
  p.add_argument("--steps", type=int, default=None, help="default 10 (quick 3)")
  p.add_argument("--repeats", type=int, default=None, help="default 3 (quick 2)")
  p.add_argument("--timeout", type=int, default=300, help="seconds per bench_train.py run")
  args = p.parse_args()
  for name, full, quick in (("warmup", 3, 2), ("steps", 10, 3), ("repeats", 3, 2)):
    if getattr(args, name) is None:
      setattr(args, name, quick if args.quick else full)
  if args.quick:
    args.backend = "xla" if args.backend == "triton" else args.backend
    max_n, device = args.max_devices or 8, "cpu"
  else:
    names = gpu_names()
    if not names:
      sys.exit("no GPU found by nvidia-smi: run with --quick for the CPU check")
    max_n, device = min(args.max_devices or len(names), len(names)), names[0]
  base = args.base_batch or (8 if args.quick else 128)
  counts = [n for n in (1, 2, 4, 8, 16) if n <= max_n]
  if base % counts[-1]:
    sys.exit(f"--base_batch={base} must divide over {counts[-1]} devices for the strong-scaling runs")

  rows = []
  print(f"{'devices':>7s} {'mode':6s} {'batch':>6s} {'ms/step':>8s} {'tokens/s':>10s} {'MFU/dev':>7s} "
        f"{'eff.':>5s} {'loss after':>10s}", flush=True)
  for mode in ("weak", "strong"):
    one = None
    for n in counts:
      batch = base * n if mode == "weak" else base
      r = {"n_devices": n, "mode": mode, "global_batch": batch, **run_one(n, batch, args)}
      if "error" not in r:
        one = one or r
        r["efficiency"] = r["tokens_per_s"] / (n * one["tokens_per_s"])
        if mode == "strong":
          r["loss_rel_diff_vs_1"] = abs(r["loss_after"] - one["loss_after"]) / abs(one["loss_after"])
        mfu = f"{100 * r['mfu_per_device']:6.1f}%" if r["mfu_per_device"] else "      -"
        print(f"{n:7d} {mode:6s} {batch:6d} {r['ms_per_step']:8.2f} {r['tokens_per_s'] / 1e6:9.3f}M {mfu} "
              f"{r['efficiency']:5.2f} {r['loss_after']:10.5f}", flush=True)
      else:
        print(f"{n:7d} {mode:6s} {batch:6d} failed: {r['error'][-300:]}", flush=True)
      rows.append(r)

  tag = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_").lower() + ("_quick" if args.quick else "")
  out = os.path.join(ROOT, "bench", "results", f"scaling_{tag}.json")
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
  except OSError:
    commit = "unknown"
  with open(out, "w") as f:
    json.dump({"device": device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "git_commit": commit, "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
               "case": args.case, "backend": args.backend, "base_batch": base, "rows": rows}, f, indent=2)
  print("wrote", out)


if __name__ == "__main__":
  main()
