"""Dev check (GPU): how far the model's fused FP8 path (norm_backend='triton', the FP8 casts inside
the kernels) lands from the XLA FP8 path, next to how far the FP8 MLP lands from the bf16 one and
the fused bf16 path from the XLA bf16 path: the relative gradient error of each block parameter,
over a few seeds, to ground tests/test_fp8_mlp.py's tolerance.

  python bench/dev_fp8_model_grads.py --out=/tmp/fp8_grads.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import model  # pylint: disable=wrong-import-position


def _cfg(**kw):
  cfg = model.default_model_config()
  cfg.update(dict(vocab_size=300, context_length=32, d_model=128, n_layers=2, n_heads=4, d_ff=320,
                  residual_dtype="bfloat16"))
  cfg.update(kw)
  return cfg


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--seeds", type=int, default=4)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  paths = {"xla_fp8": dict(mlp_fp8=True), "fused_fp8": dict(mlp_fp8=True, norm_backend="triton"),
           "xla_bf16": dict(), "fused_bf16": dict(norm_backend="triton")}
  pairs = [("fused_fp8", "xla_fp8"), ("xla_bf16", "xla_fp8"), ("fused_bf16", "xla_bf16")]
  out = []
  for seed in range(args.seeds):
    params = model.init_params(jax.random.PRNGKey(seed), _cfg())
    params["blocks"]["w2"] = 0.02 * jax.random.normal(jax.random.PRNGKey(100 + seed), params["blocks"]["w2"].shape)
    tok = jax.random.randint(jax.random.PRNGKey(200 + seed), (4, 33), 0, 300)
    res = {}
    for name, kw in paths.items():
      cfg = _cfg(**kw)
      res[name] = jax.jit(jax.value_and_grad(lambda p, c=cfg: model.loss_fn(p, tok[:, :-1], tok[:, 1:], c)))(params)
    row = {"seed": seed}
    for a, b in pairs:
      row[f"{a} vs {b}"] = {"loss": abs(float(res[a][0]) - float(res[b][0])) / float(res[b][0]),
                            **{k: _rel(res[a][1]["blocks"][k], res[b][1]["blocks"][k]) for k in res[b][1]["blocks"]}}
    out.append(row)
    for k, v in row.items():
      if k != "seed":
        print(f"seed {seed} {k:22s} " + " ".join(f"{n} {e:.1e}" for n, e in v.items()), flush=True)
  if args.out:
    json.dump({"device": jax.devices()[0].device_kind, "rows": out}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
  main()
