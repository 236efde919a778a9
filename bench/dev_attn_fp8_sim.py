"""Dev probe (GPU or CPU): would training survive the attention's q, k and v stored in e4m3? A
numerics check, not a speed change.

The attention kernels read q, k and v (and write and re-read the rotated q and k) in bf16; at the
speedrun shape they sit ~2x above their copy-bandwidth floor, and no way of scheduling them tried in
the forty-sixth and forty-seventh sessions beat the tree (docs/model.md). Moving fewer bytes is what
is left, and e4m3 operands would halve them. Before building that, this probe asks whether training
tolerates it: it rounds the packed projection [B, T, 3, H, K] through e4m3 with ONE scale per part
(q, k, v; from the current max, the best case of a delayed or bounded scale) before the attention,
straight through for the gradient. The attention's custom VJP saves the rounded tensor, so its
backward recomputes from rounded q, k and v as an FP8 kernel would. RoPE then rotates the rounded q
and k in fp32 (a kernel would round after the rotation; the information lost is alike).

  ATTN_FP8_SIM=qkv python bench/dev_attn_fp8_sim.py --config=configs/tinystories_h100.py \
      --config.model.attn_fp8_dqkv=False [train.py flags]
  TRAIN=bench/dev_attn_fp8_sim.py OUT=dir SEEDS="0 1 2" STEPS=200 bash bench/dev_loss_ab.sh \
      base="--config.model.attn_fp8_dqkv=False" qkv="ATTN_FP8_SIM=qkv --config.model.attn_fp8_dqkv=False"

ATTN_FP8_SIM: qkv | qk | v (the parts rounded); unset or 'off' runs train.py unchanged. With
attention_backend='xla' and no attn_fp8 (configs/tiny.py: a CPU proxy), 'row' rounds the rotated q, k
and v that model.attention receives, the same numerics. 'row' is
the numerics an FP8-operand kernel set would have (forty-eighth session): rotated q and k, and v,
each (token, head) row of D values rounded through e4m3 with its own power-of-two scale (the
smallest 2^e >= max|row| / 448), after the rotation, as a RoPE kernel writing e4m3 would; that
patches attention_kernel._rotated too. It wraps
attention_kernel.flash_attention_rope, the triton backend's path with model.attn_fp8_dqkv off (the
fused FP8-dQKV path does its own projection inside one custom VJP); the probe says so and stops
otherwise (a GPU, then).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from absl import app  # pylint: disable=wrong-import-position

import attention_kernel  # pylint: disable=wrong-import-position
import errors  # pylint: disable=wrong-import-position
import train  # pylint: disable=wrong-import-position

PARTS = {"qkv": (0, 1, 2), "qk": (0, 1), "v": (2,), "row": (2,)}
E4M3_MAX = 448.0


def fake_e4m3(x):
  """x rounded through e4m3 with one scale for the whole tensor (max|x| -> 448), dequantized to x's
  dtype; the gradient passes straight through."""
  x32 = x.astype(jnp.float32)
  s = jnp.maximum(jnp.max(jnp.abs(x32)), 1e-30) / E4M3_MAX
  y = (jnp.clip(x32 / s, -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn).astype(jnp.float32) * s).astype(x.dtype)
  return x + jax.lax.stop_gradient(y - x)


def pow2_ceil(x):
  """The smallest power of two >= x (x > 0 finite fp32), exactly: round the bits' mantissa up."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jax.lax.bitcast_convert_type((bits + 0x7FFFFF) & 0x7F800000, jnp.float32)


def fake_e4m3_rows(x):
  """x [..., D] with each row of D rounded through e4m3 at its own power-of-two scale, dequantized to
  x's dtype (exact in bf16); the gradient passes straight through."""
  x32 = x.astype(jnp.float32)
  s = pow2_ceil(jnp.maximum(jnp.max(jnp.abs(x32), axis=-1, keepdims=True), 1e-30) / E4M3_MAX)
  y = ((x32 / s).astype(jnp.float8_e4m3fn).astype(jnp.float32) * s).astype(x.dtype)
  return x + jax.lax.stop_gradient(y - x)


def rounded(qkv_BT3HK, parts, rows=False):
  """qkv with the given parts (0 q, 1 k, 2 v) each rounded by fake_e4m3."""
  f = fake_e4m3_rows if rows else fake_e4m3
  return jnp.stack([f(qkv_BT3HK[:, :, i]) if i in parts else qkv_BT3HK[:, :, i] for i in range(3)], axis=2)


def main(argv):
  mode = os.environ.get("ATTN_FP8_SIM", "off")
  if mode != "off":
    if mode not in PARTS:
      raise errors.UserError(f"ATTN_FP8_SIM={mode!r} is unknown; use one of {list(PARTS)} or off")
    model_cfg = train._CONFIG.value.model   # pylint: disable=protected-access
    if mode == "row" and model_cfg.get("attention_backend") == "xla" and not model_cfg.get("attn_fp8", False):
      # A CPU proxy (configs/tiny.py): the XLA path rotates q and k, then calls model.attention.
      import model  # pylint: disable=import-outside-toplevel
      plain = model.attention
      model.attention = lambda q, k, v, backend, causal=True: plain(*(fake_e4m3_rows(x) for x in (q, k, v)),
                                                                    backend, causal)
      print("dev_attn_fp8_sim: the XLA attention's rotated q, k and v rounded through e4m3 (a power-of-two "
            "scale per token and head)", flush=True)
      return train.main(argv)
    if (model_cfg.get("attn_fp8_dqkv", False) or model_cfg.get("qk_norm", False)
        or model_cfg.get("attention_backend") != "triton"):
      raise errors.UserError("ATTN_FP8_SIM needs --config.model.attn_fp8_dqkv=False, attention_backend='triton' "
                             "and no qk_norm: only then does the model call attention_kernel.flash_attention_rope")
    original = attention_kernel.flash_attention_rope

    def flash_attention_rope(qkv_BT3HK, *args, **kwargs):
      return original(rounded(qkv_BT3HK, PARTS[mode], rows=mode == "row"), *args, **kwargs)

    attention_kernel.flash_attention_rope = flash_attention_rope
    if mode == "row":   # rotated q and k rounded as the RoPE kernel writes them (inside the custom VJP)
      rotated = attention_kernel._rotated   # pylint: disable=protected-access

      def _rotated(qkv_BT3HK, cos_TK, sin_TK):
        return tuple(fake_e4m3_rows(x) for x in rotated(qkv_BT3HK, cos_TK, sin_TK))

      attention_kernel._rotated = _rotated   # pylint: disable=protected-access
    what = ("rotated q, k and v rounded through e4m3 (a power-of-two scale per token and head)" if mode == "row"
            else f"{mode} rounded through e4m3 (one scale per part)")
    print(f"dev_attn_fp8_sim: the attention's {what}", flush=True)
  train.main(argv)


if __name__ == "__main__":
  app.run(errors.cli(main), flags_parser=train._parse_flags)   # pylint: disable=protected-access
