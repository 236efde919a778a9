"""CPU check of the mechanism: the speedrun's shape (d512 L4 H16 F1344 T256, zero-init outputs, lr 1e-3,
WSD, clip 1.0) at batch 8 on the bundled sample, 60 steps: exact clipping vs delayed clipping with the
first step unclipped (delayed0, what the GPU A/B ran) vs scaled to 0 (delayedinf, the patch)."""
import json, sys
import jax.numpy as jnp
import train
from configs import tiny, tinystories_h100

variant, seed = sys.argv[1], int(sys.argv[2])
c = tiny.get_config()
sr = tinystories_h100.get_config()
for k in ("d_model", "n_layers", "n_heads", "d_ff", "context_length", "zero_init_out", "tie_embeddings"):
  c.model[k] = sr.model[k]
c.model.scan_layers = False
c.data.dir = "/tmp/dc_data"
c.train.update(dict(seed=seed, log_every=1, eval_every=20, eval_tokens=65536, steps=60, warmup_steps=20,
                    lr=1e-3, min_lr=1e-4, schedule="wsd", grad_clip=1.0, ckpt_every=1000))
if variant != "exact":
  c.train.delayed_clip = True
if variant == "delayed0":
  init = train._init_state
  def init0(config, key):
    s = init(config, key)
    s["grad_norm"] = jnp.zeros((), jnp.float32)
    return s
  train._init_state = init0
wd = f"/tmp/dc_runs2/{variant}_s{seed}"
train.train(c, wd)
ev = [json.loads(l) for l in open(wd + "/metrics.jsonl")]
tr = {e["step"]: e for e in ev if e["event"] == "train"}
print("RESULT", variant, seed, "val", {e["step"]: round(e["val_loss"], 4) for e in ev if e["event"] == "eval"},
      "train", {s: round(tr[s]["loss"], 3) for s in (10, 20, 30, 40, 50, 60) if s in tr},
      "gnorm", [round(tr[s]["grad_norm"], 2) for s in (1, 2, 3, 5, 10, 20, 40) if s in tr])
