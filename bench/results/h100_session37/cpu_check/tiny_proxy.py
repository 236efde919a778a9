"""CPU proxy: tiny config on the bundled sample, exact vs delayed clipping (first step unclipped / scaled to 0)."""
import json, sys
import jax.numpy as jnp
import train
from configs import tiny

variant, seed = sys.argv[1], int(sys.argv[2])
c = tiny.get_config()
c.data.dir = "/tmp/dc_data"
c.train.seed = seed
c.train.log_every = 1
c.train.eval_every = 100
if variant != "exact":
  c.train.delayed_clip = True
if variant == "delayed0":   # the variant the GPU A/B ran: the first step unclipped
  init = train._init_state
  def init0(config, key):
    s = init(config, key)
    s["grad_norm"] = jnp.zeros((), jnp.float32)
    return s
  train._init_state = init0
wd = f"/tmp/dc_runs/{variant}_s{seed}"
summary = train.train(c, wd)
ev = [json.loads(l) for l in open(wd + "/metrics.jsonl")]
print("RESULT", variant, seed, {e["step"]: round(e["val_loss"], 4) for e in ev if e["event"] == "eval"},
      "first grad norms", [round(e["grad_norm"], 2) for e in ev if e["event"] == "train"][:3])
