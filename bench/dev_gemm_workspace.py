"""Dev experiment (GPU): the step without cuBLASLt's workspace memsets.

The nineteenth session found 34 `Memset 0` kernels a B128 step, one in front of each cuBLASLt GEMM
that XLA hands a 32 MiB workspace (docs/model.md); in the thirtieth session's profile each still
sits on the chain with ~4-6 us of idle around it. cuBLASLt issues them itself, for algorithms that
use the workspace, and XLA has no flag for the workspace's size. It does load autotune results
(--xla_gpu_load_autotune_results_from), and each cuBLAS GEMM's entry carries the algorithm and the
workspace it was tuned with (AutotuneResult.GemmKey.autotune_workspace_size). This script:

1. compiles and times the step once, dumping its autotune results (text format);
2. writes a copy with every GEMM's workspace set to 0 (and, with --algorithm=N, its algorithm
   index set to N: with no workspace cuBLASLt's list of candidates may change, so the tuned index
   can name another kernel or none);
3. times the step loading each file, interleaved --rounds times (the same tuned choices otherwise),
   and with --profile traces one step of each and counts its memsets and idle.

A variant that fails to compile or run is recorded with its error's last lines, not raised.

  python bench/dev_gemm_workspace.py --out_dir=DIR [--rounds=2] [--algorithm=keep] [--profile]

DIR gets autotune.txt, autotune_noworkspace.txt, one bench_train JSON a run and summary.json
(device, date, commit, commands, ms per step, memsets).
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

STEP_ARGS = ["--cases=speedrun B128", "--backends=triton", "--warmup=3", "--steps=10", "--repeats=3"]
WORKSPACE = re.compile(r"(autotune_workspace_size:\s*)\d+")
# A cuBLAS GEMM's key, `gemm { algorithm: N ... }` (the Triton GEMMs' keys are `triton { ... }`).
GEMM_ALGORITHM = re.compile(r"(gemm\s*\{[^{}]*?algorithm:\s*)-?\d+")


def without_workspace(text, algorithm="keep"):
  """The autotune results' text with every GEMM's workspace 0 (and its algorithm index set to
  `algorithm` unless "keep"); returns (text, number of workspaces changed)."""
  text, n = WORKSPACE.subn(r"\g<1>0", text)
  if algorithm != "keep":
    text = GEMM_ALGORITHM.sub(lambda m: m.group(1) + str(int(algorithm)), text)
  return text, n


def run_step(name, out_dir, xla_flags, extra=()):
  """One bench_train run under XLA_FLAGS: (ms per step or None, its command, the error's tail or None,
  the traced step's memsets and idle or None)."""
  out = os.path.join(out_dir, f"step_{name}.json")
  cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_train.py"), *STEP_ARGS, *extra, f"--out={out}"]
  env = dict(os.environ, XLA_FLAGS=" ".join(xla_flags))
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  shown = f"XLA_FLAGS='{env['XLA_FLAGS']}' " + " ".join(f"'{c}'" if " " in c else c for c in cmd[1:])
  if proc.returncode != 0 or not os.path.exists(out):
    return None, shown, (proc.stdout + proc.stderr)[-3000:], None
  result = json.load(open(out))["results"][0]
  profile = result.get("profile") or {}
  timeline = profile.get("timeline_one_step") or []
  traced = None
  if timeline:
    traced = {"memsets": sum(1 for k in timeline if k[0].startswith("Memset")),
              "memset_us": round(sum(k[2] for k in timeline if k[0].startswith("Memset")), 2),
              "idle_ms_per_step": profile.get("idle_ms_per_step"),
              "first_to_last_kernel_ms_per_step": profile.get("first_to_last_kernel_ms_per_step")}
  return result.get("ms_per_step"), shown, None, traced


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out_dir", required=True)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--algorithm", default="keep", help="'keep' the tuned index, or an index for every GEMM")
  p.add_argument("--profile", action="store_true", help="also trace one step of each variant")
  args = p.parse_args()
  if args.algorithm != "keep" and not args.algorithm.lstrip("-").isdigit():
    sys.exit(f"--algorithm={args.algorithm!r}: use 'keep' or an integer index")
  os.makedirs(args.out_dir, exist_ok=True)
  tuned = os.path.join(args.out_dir, "autotune.txt")   # .txt: XLA reads and writes the text format
  edited = os.path.join(args.out_dir, "autotune_noworkspace.txt")
  if os.path.exists(tuned):
    os.remove(tuned)

  from bench_train import _git_commit  # pylint: disable=import-outside-toplevel
  summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "git_commit": _git_commit(), "command": " ".join(["bench/dev_gemm_workspace.py"] + sys.argv[1:]),
             "algorithm": args.algorithm, "runs": []}
  try:
    summary["device"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                       capture_output=True, text=True, check=False).stdout.strip()
  except OSError:
    summary["device"] = "unknown (no nvidia-smi)"

  def record(name, flags, extra=()):
    ms, cmd, err, traced = run_step(name, args.out_dir, flags, extra)
    row = {"variant": name, "ms_per_step": ms, "command": cmd}
    if err:
      row["error_tail"] = err
    if traced:
      row["trace"] = traced
    summary["runs"].append(row)
    print(f"{name}: {ms if ms is not None else 'FAILED'}" + (f"  {traced}" if traced else ""), flush=True)
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
    return ms

  if record("dump", [f"--xla_gpu_dump_autotune_results_to={tuned}"]) is None or not os.path.exists(tuned):
    sys.exit(f"the first run wrote no autotune results to {tuned}; see {args.out_dir}/summary.json")
  text = open(tuned).read()
  new_text, n = without_workspace(text, args.algorithm)
  summary["gemm_workspaces_changed"] = n
  first = re.search(r"gemm\s*\{[^{}]*\}", text)
  summary["first_gemm_key"] = first.group(0) if first else None   # the format, for the record
  summary["gemm_keys"] = len(re.findall(r"gemm\s*\{", text))
  if n == 0:
    summary["note"] = "no autotune_workspace_size field in the dumped results: nothing to change"
  with open(edited, "w") as f:
    f.write(new_text)
  print(f"{n} GEMM workspaces set to 0 in {edited}", flush=True)

  variants = {"tuned": [f"--xla_gpu_load_autotune_results_from={tuned}"],
              "noworkspace": [f"--xla_gpu_load_autotune_results_from={edited}"]}
  for i in range(1, args.rounds + 1):
    for name, flags in (variants.items() if i % 2 else reversed(variants.items())):
      record(f"{name}_{i}", flags)
  if args.profile:
    for name, flags in variants.items():
      record(f"{name}_profile", flags, ["--profile=/tmp/trace_gemm_" + name, "--profile_top=60"])


if __name__ == "__main__":
  main()
