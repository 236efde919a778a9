"""Dev tool: which kernels the traced step's span is spent on, with concurrency taken into account.

A profile's kernel times add up to more than the step (9.6 ms of kernels in a 7.9 ms span at the
speedrun shape): the concurrent command buffer runs kernels side by side. This splits the span of
one traced step (bench_train.py --profile's `timeline_one_step`) instant by instant: an instant with
k kernels running is shared equally among them, an instant with none is idle. A kernel's share is
then what the span would lose if it took no time and nothing else moved (an upper bound: what ran
beside it may run faster alone), and its time alone is the part no other kernel hides.

  python bench/dev_span_shares.py PROFILE.json [PROFILE2.json ...] [--top=25] [--out=FILE.json]

PROFILE.json: a bench_train.py --out file of a --profile run (or dev_step_variants.sh's
step_profile_*.json), or the profile dict itself. Kernels are grouped by name with the layer-count
suffixes XLA adds (`_12`) kept, since different fusions carry different numbers.
"""
import argparse
import collections
import json


# Kernel name (substring) -> group, first match wins (the loss kernel before the attention's
# fwd_kernel, which its name contains); the rest are XLA's own fusions.
GROUPS = (("loss kernel", ("xent",)), ("attention (fwd, dQ, dK/dV, RoPE)", ("fwd_kernel", "bwd_dq", "bwd_dkdv", "rope_qk")),
          ("add + norm", ("add_norm",)), ("SwiGLU", ("swiglu",)),
          ("token-last e4m3 copies", ("transpose_fp8",)), ("AdamW", ("adamw",)),
          ("GEMMs (cuBLASLt)", ("nvjet", "gemm", "cutlass", "sm90_xmma")),
          ("memsets, copies", ("Memset", "memcpy")))


def group_of(name):
  return next((g for g, keys in GROUPS if any(k in name for k in keys)), "XLA fusions")


def load_timeline(path):
  """[name, start us, duration us, idle before us] rows of one step, from either JSON form."""
  d = json.load(open(path))
  if "results" in d:
    d = next(r["profile"] for r in d["results"] if r.get("profile"))
  return d["timeline_one_step"]


def span_shares(timeline):
  """{name: [calls, kernel us, share us, alone us]} and the span's split into idle / 1 / 2 / 3+
  kernels running, in us, from the rows' start and duration."""
  events = []   # (time, +1 start / -1 end, row index); ends sort before starts at the same time
  for i, (_, start, dur, _) in enumerate(timeline):
    events += [(start, 1, i), (start + dur, -1, i)]
  events.sort(key=lambda e: (e[0], e[1]))
  per = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
  for name, _, dur, _ in timeline:
    per[name][0] += 1
    per[name][1] += dur
  by_count = collections.Counter()
  running, t_prev = set(), events[0][0]
  for t, kind, i in events:
    dt = t - t_prev
    if dt > 0:
      by_count[min(len(running), 3)] += dt
      for j in running:
        name = timeline[j][0]
        per[name][2] += dt / len(running)
        if len(running) == 1:
          per[name][3] += dt
    if kind == 1:
      running.add(i)
    else:
      running.discard(i)
    t_prev = t
  return dict(per), {"idle": by_count[0], "1 kernel": by_count[1], "2 kernels": by_count[2],
                     "3+ kernels": by_count[3]}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("profiles", nargs="+")
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--out", default=None, help="write every profile's shares here as JSON")
  args = p.parse_args()
  out = {}
  for path in args.profiles:
    timeline = load_timeline(path)
    per, split = span_shares(timeline)
    span = sum(split.values())
    kernel_us = sum(v[1] for v in per.values())
    print(f"\n{path}: span {span / 1e3:.3f} ms, kernels {kernel_us / 1e3:.3f} ms in {len(timeline)} launches; "
          + ", ".join(f"{k} {v / 1e3:.3f} ms" for k, v in split.items()))
    print(f"  {'share us':>9} {'alone us':>9} {'kernel us':>9} {'calls':>5}  kernel")
    for name, (calls, dur, share, alone) in sorted(per.items(), key=lambda kv: -kv[1][2])[:args.top]:
      print(f"  {share:9.1f} {alone:9.1f} {dur:9.1f} {calls:5d}  {name}")
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for name, v in per.items():
      groups[group_of(name)] = [a + b for a, b in zip(groups[group_of(name)], v)]
    print("  by group:")
    for name, (calls, dur, share, alone) in sorted(groups.items(), key=lambda kv: -kv[1][2]):
      print(f"  {share:9.1f} {alone:9.1f} {dur:9.1f} {calls:5d}  {name}")
    table = lambda d: {k: dict(zip(("calls", "kernel_us", "share_us", "alone_us"), v)) for k, v in d.items()}
    out[path] = {"span_us": span, "kernel_us": kernel_us, "split_us": split, "groups": table(groups),
                 "kernels": table(per)}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
