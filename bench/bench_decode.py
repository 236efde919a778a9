"""Decode speed and cache memory: MHA, MLA (native and SVD-converted) and DSA side by side.

Random params at the speedrun shape (D512 L4 H16 F1344 V10k; MLA C=128 R=32), no checkpoint. For
each (kind, batch, context S) a cache of S slots is decoded into, one token per step inside a
jitted lax.fori_loop of STEPS steps (greedy); tokens/s = batch * STEPS / time. Every step attends
over all S slots (masked), so the time is the time at a full context.

  python bench/bench_decode.py            # GPU: batch 1, 64 x context 256, 1024, 4096 (bf16)
  python bench/bench_decode.py --quick    # CPU: batch 1, 8 x context 256, 1024 (fp32)

Writes bench/results/decode_<device>.json (device, date, git commit, command, rows).
"""
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import decode  # noqa: E402
import model  # noqa: E402

_QUICK = flags.DEFINE_bool("quick", False, "Small CPU run: batch 1, 8; contexts 256, 1024; fp32.")
_STEPS = flags.DEFINE_integer("steps", 64, "Decode steps per timed call.")
_DSA_K = flags.DEFINE_integer("dsa_k", 64, "DSA: keys kept per query.")
_SVD_RANK = flags.DEFINE_integer("svd_rank", 256, "Latent width of the SVD-converted MHA ('mla_svd').")


def variants(quick):
  base = model.default_model_config()
  base.compute_dtype = "float32" if quick else "bfloat16"
  mla = base.copy_and_resolve_references()
  mla.attention = "mla"
  key = jax.random.key(0)
  p_mha = model.init_params(key, base)
  p_mla = model.init_params(key, mla)
  p_svd, _ = decode.prepare(p_mha, base, use_mla=True, mla_rank=_SVD_RANK.value)
  ix = decode.init_indexer(jax.random.key(1), base)
  k = _DSA_K.value
  return [("MHA", p_mha, base, "mha", 0, None),
          ("MLA native C128+R32", p_mla, mla, "mla", 0, None),
          (f"MLA via SVD r={_SVD_RANK.value}", p_svd, base, "mla_svd", 0, None),
          (f"DSA k={k} exact (MHA)", p_mha, base, "mha", k, None),
          (f"DSA k={k} indexer (MHA)", p_mha, base, "mha", k, ix)]


def time_decode(params, cfg, kind, B, S, top_k, indexer, steps):
  def run(params, cache, tok_B):
    def body(i, st):
      cache, tok_B = st
      logits, cache = decode.extend(params, cfg, kind, cache, tok_B[:, None], S - steps + i,
                                    jnp.zeros((B,), jnp.int32), top_k, indexer)
      return cache, jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, steps, body, (cache, tok_B))

  fn = jax.jit(run, donate_argnums=1)
  cache = decode.init_cache(params, cfg, kind, B, S, indexer)
  cache_bytes = sum(a.nbytes for a in jax.tree.leaves(cache))
  tok = jnp.zeros((B,), jnp.int32)
  cache, tok = fn(params, cache, tok)       # compile + warm up
  jax.block_until_ready(tok)
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    cache, tok = fn(params, cache, tok)
    jax.block_until_ready(tok)
    times.append(time.perf_counter() - t0)
  return B * steps / min(times), cache_bytes


def main(argv):
  del argv
  quick = _QUICK.value
  batches, contexts = ((1, 8), (256, 1024)) if quick else ((1, 64), (256, 1024, 4096))
  dev = jax.devices()[0]
  rows = []
  print(f"{dev.device_kind}: decode tokens/s and cache MiB ({'fp32' if quick else 'bf16'} cache)")
  print(f"{'variant':28s} {'B':>3s} {'S':>5s} {'tokens/s':>10s} {'cache MiB':>10s} {'B/token/layer':>14s}")
  for name, params, cfg, kind, top_k, ix in variants(quick):
    for B in batches:
      for S in contexts:
        tps, nbytes = time_decode(params, cfg, kind, B, S, top_k, ix, _STEPS.value)
        per_tok_layer = nbytes / (B * S * cfg.n_layers)
        rows.append(dict(variant=name, kind=kind, batch=B, context=S, tokens_per_s=tps, cache_bytes=nbytes,
                         cache_bytes_per_token_layer=per_tok_layer, sparse_top_k=top_k))
        print(f"{name:28s} {B:3d} {S:5d} {tps:10.1f} {nbytes / 2**20:10.2f} {per_tok_layer:14.0f}", flush=True)
  commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
  tag = "cpu" if dev.platform == "cpu" else dev.device_kind.replace(" ", "_")
  out = os.path.join(ROOT, "bench", "results", f"decode_{tag}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(dict(device=dev.device_kind, platform=dev.platform, date=datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), git_commit=commit,
        command="python " + " ".join(sys.argv), steps=_STEPS.value, rows=rows), f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
