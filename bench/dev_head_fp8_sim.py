"""Dev probe (GPU): which of the LM head's two backward dots tolerates FP8? A numerics check, not a
speed change.

The head's backward is two bf16 dots, dX = U w and dW = U^T h (U = softmax - onehot, [32768, 10112]
at the speedrun shape): ~0.42 ms each alone, ~0.88 ms side by side in the step, the largest bf16
work left. The twenty-fourth session ran both in FP8 (`head_fp8_bwd`: dX from e4m3(U x 448) and w's
e4m3 copy, dW from e5m2(U x 2^15) and h's e4m3 copy) and lost 0.05-0.08 val loss at 200 steps; which
of the two dots costs it was never separated. dX is on the backward's chain (dW is not), so an
FP8 dX alone would be the useful half.

This drop-in for train.py (it takes train.py's flags) rounds the operands of one or both dots as
that design would and computes them from the rounded values: integer-valued codes in bf16 (exact),
fp32 accumulation, the scales applied to the fp32 result, as cuBLAS's FP8 dots do.

  HEAD_FP8_SIM=dx python bench/dev_head_fp8_sim.py --config=configs/tinystories_h100.py [train.py flags]
  TRAIN=bench/dev_head_fp8_sim.py OUT=dir SEEDS="0 1" STEPS=200 bash bench/dev_loss_ab.sh \
      base= dx="HEAD_FP8_SIM=dx" dw="HEAD_FP8_SIM=dw" both="HEAD_FP8_SIM=both"

HEAD_FP8_SIM:
  dx    dX from e4m3(U x 448) and w's e4m3 copy (one scale, fp8_mlp.quantize_tensor: the forward's);
  dx5   dX from e5m2(U x 2^15) (no flush above 2^-31, 2 mantissa bits) and w's e4m3 copy;
  dxu   dX from e4m3(U x 448) and bf16 w (which of dX's two roundings matters; no cuBLAS FP8 dot
        takes one bf16 operand, so this one only locates the loss);
  dxw   dX from bf16 U and w's e4m3 copy (the same question, the other operand);
  dw    dW from e5m2(U x 2^15) and h's e4m3 copy at the final norm's static scale (the forward's);
  dwh   dW from e5m2(U x 2^15) and bf16 h (which of dW's two roundings matters);
  both  dx and dw: the twenty-fourth session's numerics (it should lose ~0.05-0.08 at 200 steps);
  kernel  no simulation: xent_kernel.DX_FP8 on (the loss kernel's e4m3 copy and the FP8 dX dot,
        what dx simulates; `git apply bench/results/h200_session50/head_fp8_dx.patch` first);
  off   (or unset) train.py unchanged.
It patches xent_kernel._bwd (the triton loss backend: the speedrun config's), so it needs
model.xent_backend='triton' and head_fp8 on, and says so otherwise.

Found (fiftieth session, H200, 200 steps, val loss minus the tree's): dw +0.003 / +0.006; dx, kernel,
dx5 and both +0.07-0.10; dxu +0.014-0.023; dxw +0.000-0.008 (docs/model.md, "Fiftieth session").
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
import xent_kernel  # pylint: disable=wrong-import-position

# mode -> make_bwd's (dX rounding: False, True (e4m3 U and w), "e5m2" (e5m2 U), "u_only", "w_only";
# dW's h: None (bf16 dW), "h8", "bf16"); "kernel" runs the real DX_FP8 path instead.
MODES = {"dx": (True, None), "dx5": ("e5m2", None), "dxu": ("u_only", None), "dxw": ("w_only", None),
         "dw": (False, "h8"), "dwh": (False, "bf16"), "both": (True, "h8"), "kernel": None}
E4M3_MAX, E5M2_U_SCALE = 448.0, 2.0 ** 15


def codes(x_f32, scale, dtype):
  """x * scale rounded (to nearest even, saturating) to the FP8 dtype, as exact bf16 values."""
  lim = float(jnp.finfo(dtype).max)
  return jnp.clip(x_f32 * scale, -lim, lim).astype(dtype).astype(jnp.bfloat16)


def make_bwd(fp8_dx, dw_h):
  """xent_kernel._bwd with dX and / or dW from FP8-rounded operands (see the module docstring)."""

  def _bwd(spec, softcap, res, g):
    h_BTD, w_pad, d_BTV, v_like, h8_like = res[:5]   # (head_fp8_dx.patch adds a sixth, DX_FP8's e4m3 copy)
    dh_BTD, dw = xent_kernel._bwd_plain(spec, softcap, res, g)[:2]   # pylint: disable=protected-access
    axis = xent_kernel._vocab_axis(spec)   # pylint: disable=protected-access
    n = d_BTV.shape[0] * d_BTV.shape[1]   # d_BTV = U / N; U itself is what the copies round
    u32 = d_BTV.astype(jnp.float32) * n
    g32 = g.astype(jnp.float32)
    if fp8_dx:
      w8_VD, sw = fp8_mlp.quantize_tensor(jnp.moveaxis(w_pad, axis, 0))
      w_op = w8_VD.astype(jnp.bfloat16)
      if fp8_dx == "u_only":   # w itself, in the units of its e4m3 codes
        w_op = (jnp.moveaxis(w_pad, axis, 0).astype(jnp.float32) / sw.reshape(())).astype(jnp.bfloat16)
      u_scale, u_dtype = (E5M2_U_SCALE, jnp.float8_e5m2) if fp8_dx == "e5m2" else (E4M3_MAX, jnp.float8_e4m3fn)
      u_op = codes(u32, u_scale, u_dtype)
      if fp8_dx == "w_only":   # U itself (the bf16 gradient), in the units of its codes
        u_op = (u32 * u_scale).astype(jnp.bfloat16)
      dh32 = jnp.einsum("btv,vd->btd", u_op, w_op, preferred_element_type=jnp.float32)
      dh_BTD = (dh32 * (sw.reshape(()) / (u_scale * n)) * g32).astype(dh_BTD.dtype)
    if dw_h is not None:
      if dw_h == "h8":
        qh = h8_like[1].reshape(())
        h_op, h_scale = fp8_mlp.quantize_static(h_BTD, qh.reshape(1)).astype(jnp.bfloat16), 1.0 / qh
      else:
        h_op, h_scale = h_BTD.astype(jnp.bfloat16), 1.0
      dw32 = jnp.einsum("btv,btd->vd", codes(u32, E5M2_U_SCALE, jnp.float8_e5m2), h_op,
                        preferred_element_type=jnp.float32)
      dw_VD = dw32 * (h_scale / (E5M2_U_SCALE * n)) * g32
      dw = jnp.moveaxis(jax.lax.slice_in_dim(dw_VD, 0, v_like.shape[1], axis=0), 0, axis).astype(dw.dtype)
    return (dh_BTD, dw, None, xent_kernel._zero_cotangents(h8_like, h_BTD.shape))   # pylint: disable=protected-access

  return _bwd


def main(argv):
  mode = os.environ.get("HEAD_FP8_SIM", "off")
  if mode != "off":
    if mode not in MODES:
      raise errors.UserError(f"HEAD_FP8_SIM={mode!r} is unknown; use one of {list(MODES)} or off")
    model_cfg = train._CONFIG.value.model   # pylint: disable=protected-access
    if model_cfg.get("xent_backend") != "triton" or not model_cfg.get("head_fp8", False):
      raise errors.UserError("HEAD_FP8_SIM needs model.xent_backend='triton' and model.head_fp8=True (the "
                             "speedrun config's): it patches xent_kernel._bwd, which h's e4m3 scale comes through")
    if mode == "kernel":
      if not hasattr(xent_kernel, "DX_FP8"):
        raise errors.UserError("HEAD_FP8_SIM=kernel needs xent_kernel.DX_FP8, removed after the fiftieth session: "
                               "git apply bench/results/h200_session50/head_fp8_dx.patch")
      xent_kernel.DX_FP8 = True
    else:
      xent_kernel._bwd_plain = xent_kernel._bwd   # pylint: disable=protected-access
      xent_kernel.head_cross_entropy.defvjp(xent_kernel._fwd, make_bwd(*MODES[mode]))   # pylint: disable=protected-access
    print(f"dev_head_fp8_sim: the head's backward with {mode} in FP8"
          f"{' (xent_kernel.DX_FP8)' if mode == 'kernel' else ' (simulated)'}", flush=True)
  train.main(argv)


if __name__ == "__main__":
  app.run(errors.cli(main), flags_parser=train._parse_flags)   # pylint: disable=protected-access
