"""Dev probe (GPU or CPU): would x Wqkv's backward survive FP8? A numerics check, not a speed change.

The attention's projection backward is the largest pair of bf16 dots left in the speedrun step: dh =
dQKV Wqkv^T and dW = h^T dQKV took 72 + 67 us a layer, one after the other, in the thirty-eighth
session's H100 profile (docs/model.md). In e4m3 they would take roughly half, but dQKV comes out of
the attention's backward kernels one head at a time, so a per-token scale (what the MLP's FP8
gradients use) is out of reach there; one scale for the whole tensor is what those kernels could
apply as they store. Before building that, this probe asks whether training tolerates it: it
re-registers fp8_mlp.qkv_dot's backward so that the cotangent is rounded to FP8 with ONE scale for
the tensor (from its current max: the best case of a delayed or bounded scale) and both dots read
FP8-rounded operands (w per tensor in e4m3, as the forward's w8; h as the forward's static-scaled
e4m3 copy h8). The dots themselves run in fp32 on the rounded values, so only the rounding differs.

  QKV_GRAD_SIM=e5m2 python bench/dev_qkv_grad_sim.py --config=configs/tinystories_h100.py [train.py flags]
  TRAIN=bench/dev_qkv_grad_sim.py OUT=dir SEEDS="0 1 2 3 4" STEPS=200 bash bench/dev_loss_ab.sh \
      base= e4m3="QKV_GRAD_SIM=e4m3" e5m2="QKV_GRAD_SIM=e5m2"

QKV_GRAD_SIM: e4m3 | e5m2 (the cotangent's format); unset or 'off' runs train.py unchanged. Needs
model.attn_fp8 (the only path through qkv_dot); the probe says so and stops otherwise.
QKV_GRAD_SIM_LOG=FILE (with a format) appends max|cotangent| of every qkv_dot backward to FILE, one
line a call (layers last to first within a step; a host callback, so the step runs slower): how far
the tensor's range moves over training, which decides whether a fixed scale could replace a measured one.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from absl import app  # pylint: disable=wrong-import-position

import errors  # pylint: disable=wrong-import-position
import fp8_mlp  # pylint: disable=wrong-import-position
import train  # pylint: disable=wrong-import-position

FORMATS = {"e4m3": (jnp.float8_e4m3fn, 448.0), "e5m2": (jnp.float8_e5m2, 57344.0)}


def fake_quant(x, fmt):
  """x rounded through `fmt` with one scale for the whole tensor (max|x| -> the format's largest
  finite value), returned dequantized in fp32."""
  dtype, fmax = FORMATS[fmt]
  x = x.astype(jnp.float32)
  s = jnp.maximum(jnp.max(jnp.abs(x)), 1e-30) / fmax
  return jnp.clip(x / s, -fmax, fmax).astype(dtype).astype(jnp.float32) * s


def simulated_bwd(fmt):
  """fp8_mlp._qkv_bwd with FP8-rounded operands (see the module docstring); same signature."""
  log = os.environ.get("QKV_GRAD_SIM_LOG")

  def append(amax):
    with open(log, "a", encoding="utf-8") as f:
      f.write(f"{float(amax):.6e}\n")

  def bwd(res, cotangents):
    h_ND, h8_ND, qh, w_DE, s, _, w8_cot = res
    if log:
      jax.debug.callback(append, jnp.max(jnp.abs(cotangents[0].astype(jnp.float32))))
    d = fake_quant(cotangents[0], fmt)                  # d_raw = s dL/d(h w)
    w8, sw = fp8_mlp.quantize_tensor(w_DE)              # w per tensor in e4m3, as the forward's w8
    w = w8.astype(jnp.float32) * sw
    h = h8_ND.astype(jnp.float32) / qh                  # the forward's e4m3 copy of h, dequantized
    dh_ND = jnp.dot(d, w.T, precision="highest") / s
    dw_DE = jnp.dot(h.T, d, precision="highest") / s
    return (dh_ND.astype(h_ND.dtype), jnp.zeros_like(h8_ND), jnp.zeros_like(qh), dw_DE.astype(w_DE.dtype), w8_cot)
  return bwd


def main(argv):
  fmt = os.environ.get("QKV_GRAD_SIM", "off")
  if fmt != "off":
    if fmt not in FORMATS:
      raise errors.UserError(f"QKV_GRAD_SIM={fmt!r} is unknown; use one of {list(FORMATS)} or off")
    if not train._CONFIG.value.model.get("attn_fp8", False):   # pylint: disable=protected-access
      raise errors.UserError("QKV_GRAD_SIM needs --config.model.attn_fp8=True: only that path runs qkv_dot")
    fp8_mlp.qkv_dot.defvjp(fp8_mlp._qkv_fwd, simulated_bwd(fmt))   # pylint: disable=protected-access
    print(f"dev_qkv_grad_sim: x Wqkv's backward on {fmt}-rounded cotangents (one scale per tensor)", flush=True)
  train.main(argv)


if __name__ == "__main__":
  app.run(errors.cli(main), flags_parser=train._parse_flags)   # pylint: disable=protected-access
