"""Reads bench/dev_attn_ab.py's JSON and prints the Python statement (for dev_step_variants.sh's PRE_)
that gives each attention kernel its fastest variant: heads a program and tile. Variants are the
session's call_a.sh ones: tree, hp2 (two heads), hp2s (two heads, 32 x 32 tiles), hp1s (one, 32 x 32)."""
import json
import sys

HEADS = {"tree": 1, "hp2": 2, "hp2s": 2, "hp1s": 1}
SMALL = {"fwd": "(32, 32, 4, 3)", "dq": "(32, 32, 4, 4)", "dkdv": "(32, 32, 4, 3)"}
TABLE = {"fwd": "_FWD", "dq": "_DQ", "dkdv": "_DKDV"}
med = json.load(open(sys.argv[1]))["medians_ms"]
names = {"fwd": "fwd_kernel", "dq": "bwd_dq_rope_kernel", "dkdv": "bwd_dkdv_rope_kernel"}
best = {}
for k, kern in names.items():
  times = {v: m[kern] for v, m in med.items() if kern in m}
  best[k] = min(times, key=times.get)
  print(f"{k}: {best[k]} " + " ".join(f"{v} {t * 1e3:.1f}" for v, t in times.items()), file=sys.stderr)
stmt = ["import attention_kernel as a",
        f"a.HEADS_PER_PROGRAM = ({HEADS[best['fwd']]}, {HEADS[best['dkdv']]}, {HEADS[best['dq']]})"]
stmt += [f"a.{TABLE[k]}[32] = {SMALL[k]}" for k in names if best[k].endswith("s")]
print("; ".join(stmt))
