"""The Transformer LM as pure functions: params are a plain dict of arrays, no Flax.

Pre-norm decoder (docs/model.md): token embedding -> n_layers x [x += attn(RMSNorm(x));
x += SwiGLU(RMSNorm(x))] -> final RMSNorm -> LM head (tied to the embedding by default).
Per-layer weights are stacked on a leading L axis so the layers can run under `lax.scan`.

Mixed precision: params are fp32 masters; matmul inputs are cast to `cfg.compute_dtype`
(bf16 on GPU), while the residual stream, norms, softmax, RoPE and the loss stay in fp32.

Attention kinds ('mha', 'mla') are pairs of functions in `_ATTENTION` (init, apply); the
kernel that runs softmax(QK^T)V is chosen separately by `cfg.attention_backend`.
"""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from errors import UserError

NORM_EPS = 1e-5
BACKENDS = ("xla", "cudnn", "triton", "cuda")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_model_config():
  """All `config.model` fields at the TinyStories speedrun values (configs start from this)."""
  return ml_collections.ConfigDict(dict(
      vocab_size=10_000,
      context_length=256,
      d_model=512,
      n_layers=4,
      n_heads=16,
      d_ff=1344,               # 8/3 * d_model rounded to a multiple of 64
      rope_theta=10_000.0,
      attention="mha",         # 'mha' | 'mla'
      attention_backend="xla",  # 'xla' | 'cudnn' | 'triton' | 'cuda'
      xent_backend="xla",      # 'xla' | 'triton': the loss's softmax pass (xent_kernel.py, GPU only)
      norm_backend="xla",      # 'xla' | 'triton': residual add + RMSNorm in one kernel (norm_kernel.py, GPU only)
      swiglu_backend="xla",    # 'xla' | 'triton': SwiGLU's backward in one kernel (swiglu_kernel.py, GPU only)
      mlp_fp8=False,           # three of the MLP's six matmuls in e4m3 (fp8_mlp.py); decode.py stays bf16
      attn_fp8=False,          # the attention's x Wqkv in e4m3 (fp8_mlp.qkv_dot); MHA without qk_norm
      attn_fp8_dqkv=False,     # with attn_fp8: x Wqkv's backward dots in FP8 too, on e5m2 dQKV from the
                               # attention's kernels (attention_kernel.flash_attention_qkv_fp8)
      mlp_fp8_w2=False,        # with mlp_fp8: the forward's act x W2 in e4m3 too (four of six); else unused
      mlp_fp8_wgrad=False,     # with mlp_fp8: W13's weight gradient in e4m3 too (fp8_mlp.wgrad_fp8); else unused
      mlp_fp8_wgrad_w2=False,  # with mlp_fp8 and mlp_fp8_w2: W2's weight gradient in e4m3 too; else unused
      mlp_fp8_h13=False,       # with mlp_fp8: x W13's output in e4m3 too (fp8_mlp.dot8_e4m3); else unused
      mlp_fp8_da=False,        # with mlp_fp8: the backward's dY W2^T output in e4m3 too; else unused
      head_fp8=False,          # the LM head's forward logits from an e4m3 dot (fp8_mlp.head_logits); gradients bf16
      tie_embeddings=True,
      compute_dtype="bfloat16",  # matmul dtype; 'float32' for exact CPU checks
      residual_dtype="float32",  # the residual stream between blocks; 'bfloat16' halves its traffic
      scan_layers=False,       # Python loop: 30% faster step on the H100 than lax.scan (docs/model.md)
      kv_lora_rank=128,        # MLA only: latent width C of the compressed K/V
      rope_head_dim=32,        # MLA only: per-head width R of the decoupled RoPE part
      # Tokens-to-target options (issue 8; docs/model.md), all off by default:
      qk_norm=False,           # RMSNorm over the head dim of q and k (learned gains), before RoPE
      zero_init_out=False,     # block output projections wo, w2 start at zero: each block starts as identity
      logit_softcap=0.0,       # c > 0: logits = c * tanh(logits / c) (Gemma 2); 0 = off
      # x + attn(n(x)) + mlp(n(x)) with one norm a layer (GPT-J, PaLM) instead of two in sequence
      parallel_block=False,
  ))


def _option(cfg, name):
  """A model option added after the first checkpoints: configs saved before it existed lack it and
  get its default (off / the previous behaviour)."""
  return cfg.get(name, default_model_config()[name])


# ----------------------------------------------------------------------------- checks


def _check(cfg):
  """Trace-time validation of the config; every failure names the field and the fix."""
  if cfg.d_model % cfg.n_heads:
    raise UserError(f"config.model.d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}; "
                    "choose n_heads dividing d_model")
  if (cfg.d_model // cfg.n_heads) % 2:
    raise UserError(f"head dim d_model/n_heads={cfg.d_model // cfg.n_heads} is odd; RoPE rotates pairs, "
                    "so choose d_model and n_heads with an even head dim")
  if cfg.attention not in _ATTENTION:
    raise UserError(f"config.model.attention={cfg.attention!r} is unknown; use one of {sorted(_ATTENTION)}")
  if cfg.attention_backend not in BACKENDS:
    raise UserError(f"config.model.attention_backend={cfg.attention_backend!r} is unknown; "
                    f"use one of {list(BACKENDS)}")
  if _option(cfg, "xent_backend") not in ("xla", "triton"):
    raise UserError(f"config.model.xent_backend={cfg.xent_backend!r} is unknown; use 'xla' or 'triton'")
  if _option(cfg, "norm_backend") not in ("xla", "triton"):
    raise UserError(f"config.model.norm_backend={cfg.norm_backend!r} is unknown; use 'xla' or 'triton'")
  if _option(cfg, "swiglu_backend") not in ("xla", "triton"):
    raise UserError(f"config.model.swiglu_backend={cfg.swiglu_backend!r} is unknown; use 'xla' or 'triton'")
  if _option(cfg, "norm_backend") == "triton" and cfg.scan_layers:
    # The fused kernel pairs each residual add with the NEXT norm, across layer boundaries, which a
    # scan over one layer's weights cannot express.
    raise UserError("config.model.norm_backend='triton' needs scan_layers=False; set "
                    "--config.model.scan_layers=False or --config.model.norm_backend=xla")
  fp8_all = ("mlp_fp8", "mlp_fp8_w2", "mlp_fp8_wgrad", "mlp_fp8_wgrad_w2")
  if (_option(cfg, "parallel_block") and _option(cfg, "norm_backend") == "triton"
      and not all(_option(cfg, name) for name in fp8_all)):
    # fp8_mlp.parallel_sublayer is built for the speedrun's all-FP8 MLP only.
    raise UserError("config.model.parallel_block=True with norm_backend='triton' needs the all-FP8 MLP ("
                    + ", ".join(f"{name}=True" for name in fp8_all) + "); set those, or "
                    "--config.model.norm_backend=xla")
  if cfg.compute_dtype not in DTYPES:
    raise UserError(f"config.model.compute_dtype={cfg.compute_dtype!r} is unknown; use one of {list(DTYPES)}")
  if _option(cfg, "residual_dtype") not in DTYPES:
    raise UserError(f"config.model.residual_dtype={cfg.residual_dtype!r} is unknown; use one of {list(DTYPES)}")
  if cfg.attention == "mla" and cfg.rope_head_dim % 2:
    raise UserError(f"config.model.rope_head_dim={cfg.rope_head_dim} is odd; RoPE needs an even width")
  if cfg.attention == "mla" and _option(cfg, "qk_norm"):
    # MLA decoding absorbs W_uk into the query and never builds per-head keys, so a norm on them
    # would break the latent cache.
    raise UserError("config.model.qk_norm=True is not supported with attention='mla'; set "
                    "--config.model.qk_norm=False or use --config.model.attention=mha")
  if _option(cfg, "logit_softcap") < 0:
    raise UserError(f"config.model.logit_softcap={cfg.logit_softcap} is negative; use 0 (off) or a "
                    "positive cap such as 30")
  if _option(cfg, "attn_fp8") and (cfg.attention != "mha" or _option(cfg, "qk_norm")):
    # Its scale is folded into the RoPE tables and Wo (_mha): a norm on q and k, or MLA's
    # projections, would sit between the dot and those.
    raise UserError("config.model.attn_fp8=True supports attention='mha' without qk_norm; set "
                    "--config.model.attn_fp8=False")
  if _option(cfg, "attn_fp8_dqkv") and not _option(cfg, "attn_fp8"):
    raise UserError("config.model.attn_fp8_dqkv=True is x Wqkv's FP8 backward and needs its FP8 forward: set "
                    "--config.model.attn_fp8=True too, or --config.model.attn_fp8_dqkv=False")
  for name in ("mlp_fp8", "attn_fp8", "head_fp8"):
    older_sm = _option(cfg, name) and gpu_without_fp8()
    if older_sm:
      raise UserError(f"config.model.{name}=True needs e4m3 tensor cores (compute capability >= 8.9: "
                      f"H100, H200, L4, RTX 40xx), but this GPU is sm_{older_sm}; set "
                      f"--config.model.{name}=False")


def gpu_without_fp8():
  """The compute capability ('80') of an NVIDIA GPU older than Ada/Hopper, whose cuBLAS and Triton
  have no e4m3 path; None on a CPU (XLA emulates the FP8 dots there) or a GPU that has one."""
  dev = jax.devices()[0]
  cc = getattr(dev, "compute_capability", None) if dev.platform == "gpu" else None
  try:
    major, minor = (int(v) for v in str(cc).split(".")[:2])
  except ValueError:   # None, or not an NVIDIA version string
    return None
  return f"{major}{minor}" if (major, minor) < (8, 9) else None


# ----------------------------------------------------------------------------- init


def _linear(key, shape, d_in, d_out):
  """CS336 linear init: N(0, 2/(d_in+d_out)) truncated at +-3 sigma; shape may be stacked/fused."""
  std = math.sqrt(2.0 / (d_in + d_out))
  return std * jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32)


def _init_mha(key, cfg):
  L, D, H = cfg.n_layers, cfg.d_model, cfg.n_heads
  K = D // H
  k_qkv, k_o = jax.random.split(key)
  # Q, K and V fused into one weight: one (D x 3HK) matmul instead of three; every element has the
  # same distribution as in three separate D x HK matrices.
  return {"wqkv": _linear(k_qkv, (L, D, 3, H, K), D, H * K),
          "wo": _linear(k_o, (L, H, K, D), H * K, D)}


def _init_mla(key, cfg):
  L, D, H, C, R = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_lora_rank, cfg.rope_head_dim
  K = D // H
  k_q, k_dkv, k_ukv, k_o = jax.random.split(key, 4)
  return {
      "wq": _linear(k_q, (L, D, H, K + R), D, H * (K + R)),     # per-head [no-RoPE K | RoPE R]
      "wdkv": _linear(k_dkv, (L, D, C + R), D, C + R),           # [latent C | shared RoPE key R]
      "kv_norm": jnp.ones((L, C), jnp.float32),
      "wukv": _linear(k_ukv, (L, C, 2, H, K), C, H * K),         # latent -> per-head K and V
      "wo": _linear(k_o, (L, H, K, D), H * K, D),
  }


def init_params(key, cfg):
  """fp32 master params: {"embed": VxD, "blocks": {...stacked on L}, "final_norm": D, "lm_head"?: DxV}."""
  _check(cfg)
  L, D, F, V = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size
  k_emb, k_attn, k_13, k_2, k_head = jax.random.split(key, 5)
  blocks = {
      "attn_norm": jnp.ones((L, D), jnp.float32),
      **_ATTENTION[cfg.attention][0](k_attn, cfg),
      # W1 and W3 fused: [gate (W1) | up (W3)], one D x 2F matmul.
      "w13": _linear(k_13, (L, D, 2, F), D, F),
      "w2": _linear(k_2, (L, F, D), F, D),
  }
  if cfg.tie_embeddings:
    # The shared matrix is also the D -> V head, so it gets the head's linear init (std ~0.014 at
    # V=10k): an N(0,1) embedding as head gives logits of std sqrt(D) and, worse, a logit ~D for
    # the input token itself (docs/model.md). Untrained loss is then ln(V) + <0.2.
    embed = _linear(k_emb, (V, D), D, V)
  else:
    embed = jax.random.truncated_normal(k_emb, -3.0, 3.0, (V, D), jnp.float32)   # CS336: N(0, 1)
  params = {
      "embed": embed,
      "blocks": blocks,
      "final_norm": jnp.ones((D,), jnp.float32),
  }
  if not _option(cfg, "parallel_block"):   # the parallel block's MLP reads the attention's norm
    blocks["mlp_norm"] = jnp.ones((L, D), jnp.float32)
  if not cfg.tie_embeddings:
    params["lm_head"] = _linear(k_head, (D, V), D, V)
  if _option(cfg, "qk_norm"):
    K = D // cfg.n_heads
    blocks["q_norm"] = jnp.ones((L, K), jnp.float32)   # named *norm*: adamw.decay_mask skips them
    blocks["k_norm"] = jnp.ones((L, K), jnp.float32)
  if _option(cfg, "zero_init_out"):
    # Drawn above and then replaced, so every other weight keeps the same random draw as without it.
    blocks["wo"], blocks["w2"] = jnp.zeros_like(blocks["wo"]), jnp.zeros_like(blocks["w2"])
  return params


def count_params(params):
  """Total number of parameters (the tied head counted once, as the embedding)."""
  return int(sum(x.size for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- layers


def rms_norm(x, gain, dtype):
  """RMSNorm in fp32 (eps 1e-5), returned in `dtype` for the matmul that follows."""
  x = x.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + NORM_EPS)
  return (x * gain.astype(jnp.float32)).astype(dtype)


def rope_tables(T, dim, theta):
  """cos, sin of shape T x dim/2: angle pos * theta^(-2k/dim) for pair k (computed once per forward)."""
  inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angle_TK = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  return jnp.cos(angle_TK), jnp.sin(angle_TK)


def apply_rope(x_BTHK, cos_TK, sin_TK):
  """Rotates adjacent pairs (x[2k], x[2k+1]) by the angles of the table; math in fp32."""
  x = x_BTHK.astype(jnp.float32).reshape(*x_BTHK.shape[:-1], -1, 2)
  x0, x1 = x[..., 0], x[..., 1]
  cos, sin = cos_TK[:, None, :], sin_TK[:, None, :]   # broadcast over heads
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x_BTHK.shape).astype(x_BTHK.dtype)


def swiglu(p, h_BTD, dtype, backend="xla", fp8=False, fp8_w2=False, fp8_wgrad=False, fp8_wgrad_w2=False,
           fp8_h13=False, fp8_da=False):
  """W2(SiLU(W1 h) * W3 h) with W1, W3 fused in p['w13'] (D x 2 x F); backend 'triton' runs the
  gate's backward as one kernel (swiglu_kernel.py), same forward values; fp8 runs three of its six
  matmuls in e4m3, fp8_w2 a fourth, fp8_wgrad W13's weight gradient too, fp8_wgrad_w2 (with fp8_w2)
  W2's, fp8_h13 writes x W13 in e4m3 and fp8_da dY W2^T (fp8_mlp.swiglu, the XLA version;
  _hidden_fused_norms uses the fused one)."""
  if fp8:
    import fp8_mlp  # pylint: disable=import-outside-toplevel
    return fp8_mlp.swiglu(h_BTD, p["w13"], p["w2"], dtype, bool(fp8_w2), bool(fp8_wgrad), bool(fp8_wgrad_w2),
                          bool(fp8_h13), bool(fp8_da))
  h13_BT2F = jnp.einsum("btd,dsf->btsf", h_BTD, p["w13"].astype(dtype))
  if backend == "triton":
    import swiglu_kernel  # pylint: disable=import-outside-toplevel  (UserError without triton/GPU)
    act_BTF = swiglu_kernel.silu_mul(h13_BT2F)
  else:
    act_BTF = jax.nn.silu(h13_BT2F[:, :, 0]) * h13_BT2F[:, :, 1]
  return jnp.einsum("btf,fd->btd", act_BTF, p["w2"].astype(dtype))


# ----------------------------------------------------------------------------- attention


def _xla_attention(q_BTHK, k_BTHK, v_BTHK, causal, scale):
  """Reference: einsum scores in fp32, causal mask, fp32 softmax, probabilities back to input dtype."""
  s_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BTHK, preferred_element_type=jnp.float32) * scale
  if causal:
    T, S = q_BTHK.shape[1], k_BTHK.shape[1]
    keep_TS = jnp.tril(jnp.ones((T, S), dtype=bool), k=S - T)
    s_BHTS = jnp.where(keep_TS, s_BHTS, -jnp.inf)
  p_BHTS = jax.nn.softmax(s_BHTS, axis=-1).astype(v_BTHK.dtype)
  return jnp.einsum("bhts,bshk->bthk", p_BHTS, v_BTHK)


def attention(q_BTHK, k_BTHK, v_BTHK, backend, causal=True):
  """softmax(q k^T / sqrt(K)) v with the chosen backend; q, k, v and the output are B x T x H x K."""
  scale = 1.0 / math.sqrt(q_BTHK.shape[-1])
  if backend == "xla":
    return _xla_attention(q_BTHK, k_BTHK, v_BTHK, causal, scale)
  if backend == "cudnn":
    if jax.default_backend() != "gpu":
      raise UserError("attention_backend='cudnn' needs an NVIDIA GPU; on this machine use "
                      "--config.model.attention_backend=xla")
    if q_BTHK.dtype not in (jnp.bfloat16, jnp.float16):
      raise UserError("attention_backend='cudnn' runs in bf16/fp16 only; set "
                      "--config.model.compute_dtype=bfloat16 or use attention_backend=xla")
    return jax.nn.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, scale=scale, is_causal=causal,
                                        implementation="cudnn")
  if backend == "triton":
    # Imported here so CPU runs never load it; it raises a UserError itself when triton,
    # jax-triton or the GPU is missing.
    import attention_kernel  # pylint: disable=import-outside-toplevel
    return attention_kernel.flash_attention(q_BTHK, k_BTHK, v_BTHK, causal=causal, sm_scale=scale)
  if backend == "cuda":
    import attention_cuda  # pylint: disable=import-outside-toplevel  (UserError without nvcc/GPU)
    return attention_cuda.cuda_attention(q_BTHK, k_BTHK, v_BTHK, causal=causal, sm_scale=scale)
  raise UserError(f"attention backend {backend!r} is unknown; use one of {list(BACKENDS)}")


def qk_norm(p, q_BTHK, k_BTHK, cfg, dtype):
  """With cfg.qk_norm, RMSNorm of q and k over the head dim (OLMo-2, Gemma 3), else q, k unchanged."""
  if not _option(cfg, "qk_norm"):
    return q_BTHK, k_BTHK
  return rms_norm(q_BTHK, p["q_norm"], dtype), rms_norm(k_BTHK, p["k_norm"], dtype)


@jax.custom_vjp
def out_proj(o_BTHK, wo_HKD):
  """The attention's output projection, o Wo ('bthk,hkd->btd'). Its own VJP only orders the weight
  gradient's dot as o^T dY: autodiff's transpose makes it dY^T o, which comes out D x HK, and XLA
  then transposes cuBLAS's split-K partials as it sums them (58 us a B128 step for the 4 layers'
  f32[8, 512, 512] partials on the H200; docs/model.md). Same values otherwise."""
  return jnp.einsum("bthk,hkd->btd", o_BTHK, wo_HKD)


def _out_proj_fwd(o_BTHK, wo_HKD):
  return out_proj(o_BTHK, wo_HKD), (o_BTHK, wo_HKD)


def _out_proj_bwd(res, dy_BTD):
  o_BTHK, wo_HKD = res
  return jnp.einsum("btd,hkd->bthk", dy_BTD, wo_HKD), jnp.einsum("bthk,btd->hkd", o_BTHK, dy_BTD)


out_proj.defvjp(_out_proj_fwd, _out_proj_bwd)


def _mha(p, h_BTD, rope, cfg, dtype, h8=None):
  """Multi-head attention with RoPE on q and k; returns the block's B x T x D output. With h8 =
  (e4m3 copy of h, its scale[, this layer's fp8_mlp.qkv_weights or None[, dh_raw[, h8_DN]]])
  (attn_fp8), x Wqkv runs in e4m3 (fp8_mlp.qkv_dot). dh_raw (attn_fp8_dqkv): h's gradient leaves
  without its 2^-k, which the norm that made h applies (_hidden_fused_norms,
  attention_kernel.DH_SCALE); h8_DN: the copy's token-last layout, made by the caller (attn_fp8_dqkv)."""
  cos, sin = rope
  wo = p["wo"]
  if h8 is None:
    qkv_BT3HK = jnp.einsum("btd,dshk->btshk", h_BTD, p["wqkv"].astype(dtype))
  else:
    import fp8_mlp  # pylint: disable=import-outside-toplevel
    B, T, D = h_BTD.shape
    if _option(cfg, "attn_fp8_dqkv"):
      # x Wqkv and the attention as one custom VJP, whose backward hands the dot's FP8 backward dQKV in
      # e5m2 from the attention's kernels; o comes out divided by the dot's scale s, folded into Wo as
      # below. Without the triton backend, XLA computes the same arithmetic (the reference).
      import attention_kernel  # pylint: disable=import-outside-toplevel
      o_BTHK, s = attention_kernel.flash_attention_qkv_fp8(
          h_BTD.reshape(B * T, D), h8[0].reshape(B * T, D), h8[1], p["wqkv"].reshape(D, -1), cfg.n_heads, cos, sin,
          B, h8[2] if len(h8) > 2 else None, kernels=cfg.attention_backend == "triton",
          dh_raw=len(h8) > 3 and h8[3], h8_DN=h8[4] if len(h8) > 4 else None)
      return out_proj(o_BTHK, (wo * s).astype(dtype))
    raw_NE, s = fp8_mlp.qkv_dot(h_BTD.reshape(B * T, D), h8[0].reshape(B * T, D), h8[1], p["wqkv"].reshape(D, -1),
                                *h8[2:])
    qkv_BT3HK = raw_NE.reshape(B, T, *p["wqkv"].shape[1:])
    # The dot's scale s, folded in where its output is read: RoPE is linear in its tables, so rotated
    # q and k come out scaled; v's scale passes through softmax(.) v linearly into the output
    # projection. No pass over the B x T x 3D projection; gradients follow (s is a constant).
    cos, sin, wo = cos * s, sin * s, wo * s
  if cfg.attention_backend == "triton" and not _option(cfg, "qk_norm"):
    # RoPE's backward and the q/k/v split inside the kernel's custom VJP: 11.49 -> 11.14 ms per B128
    # step on the H100 (docs/model.md, "Fused kernels").
    import attention_kernel  # pylint: disable=import-outside-toplevel
    o_BTHK = attention_kernel.flash_attention_rope(qkv_BT3HK, cos, sin)
    return out_proj(o_BTHK, wo.astype(dtype))
  q_BTHK, k_BTHK = qk_norm(p, qkv_BT3HK[:, :, 0], qkv_BT3HK[:, :, 1], cfg, dtype)
  q_BTHK = apply_rope(q_BTHK, cos, sin)
  k_BTHK = apply_rope(k_BTHK, cos, sin)
  o_BTHK = attention(q_BTHK, k_BTHK, qkv_BT3HK[:, :, 2], cfg.attention_backend)
  return out_proj(o_BTHK, wo.astype(dtype))


def _attn_input_fp8(h_BTD, gain_D, cfg):
  """(e4m3 copy of the attention's normed input, its scale) for _mha when attn_fp8, else None."""
  if not _option(cfg, "attn_fp8"):
    return None
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  q = fp8_mlp.static_scale(gain_D)
  return jax.lax.stop_gradient(fp8_mlp.quantize_static(h_BTD, q)), q


def _mla(p, h_BTD, rope, cfg, dtype, h8=None):  # pylint: disable=unused-argument  (attn_fp8 is MHA-only: _check)
  """Multi-head latent attention (DeepSeek-V2), training form without a KV cache.

  K and V are up-projected from a C-wide latent (RMS-normed); RoPE lives in a separate R-wide part:
  per-head for q, one key shared by all heads. Scores use the concatenated [no-RoPE K | RoPE R] dims,
  so any backend runs it; V is zero-padded to K+R wide for the backends and the padding cut off after.
  """
  C, K = cfg.kv_lora_rank, cfg.d_model // cfg.n_heads
  cos, sin = rope
  q_BTHE = jnp.einsum("btd,dhe->bthe", h_BTD, p["wq"].astype(dtype))           # E = K + R
  q_BTHE = jnp.concatenate([q_BTHE[..., :K], apply_rope(q_BTHE[..., K:], cos, sin)], axis=-1)
  ckv_BTE = jnp.einsum("btd,de->bte", h_BTD, p["wdkv"].astype(dtype))         # E = C + R
  c_BTC = rms_norm(ckv_BTE[..., :C], p["kv_norm"], dtype)
  kr_BT1R = apply_rope(ckv_BTE[:, :, None, C:], cos, sin)
  kv_BT2HK = jnp.einsum("btc,cshk->btshk", c_BTC, p["wukv"].astype(dtype))
  k_nope_BTHK, v_BTHK = kv_BT2HK[:, :, 0], kv_BT2HK[:, :, 1]
  R = kr_BT1R.shape[-1]
  k_BTHE = jnp.concatenate([k_nope_BTHK, jnp.broadcast_to(kr_BT1R, (*k_nope_BTHK.shape[:3], R))], axis=-1)
  v_BTHE = jnp.pad(v_BTHK, ((0, 0), (0, 0), (0, 0), (0, R)))
  o_BTHK = attention(q_BTHE, k_BTHE, v_BTHE, cfg.attention_backend)[..., :K]
  return out_proj(o_BTHK, p["wo"].astype(dtype))


# kind -> (init of its stacked weights, per-layer apply). Add a kind here (e.g. DSA) with both.
_ATTENTION = {"mha": (_init_mha, _mha), "mla": (_init_mla, _mla)}


def _rope_dim(cfg):
  return cfg.rope_head_dim if cfg.attention == "mla" else cfg.d_model // cfg.n_heads


def block(p, x_BTD, rope, cfg):
  """One pre-norm layer on the residual stream (fp32 unless residual_dtype says otherwise); p holds this
  layer's (unstacked) weights."""
  dtype = DTYPES[cfg.compute_dtype]
  attn_fn = _ATTENTION[cfg.attention][1]
  h_BTD = rms_norm(x_BTD, p["attn_norm"], dtype)
  h8 = _attn_input_fp8(h_BTD, p["attn_norm"], cfg)
  attn_BTD = attn_fn(p, h_BTD, rope, cfg, dtype, h8)
  mlp = functools.partial(swiglu, p, dtype=dtype, backend=_option(cfg, "swiglu_backend"), fp8=_option(cfg, "mlp_fp8"),
                          fp8_w2=_option(cfg, "mlp_fp8_w2"), fp8_wgrad=_option(cfg, "mlp_fp8_wgrad"),
                          fp8_wgrad_w2=_option(cfg, "mlp_fp8_wgrad_w2"), fp8_h13=_option(cfg, "mlp_fp8_h13"),
                          fp8_da=_option(cfg, "mlp_fp8_da"))
  if _option(cfg, "parallel_block"):
    # Both branches read the same normed x, so a layer has one norm and its two halves no order.
    return _residual_add(x_BTD, attn_BTD, mlp(h_BTD))
  x_BTD = _residual_add(x_BTD, attn_BTD)
  return _residual_add(x_BTD, mlp(rms_norm(x_BTD, p["mlp_norm"], dtype)))


def _residual_add(x_BTD, *ys_BTD):
  """x + the ys summed in fp32 and rounded once to the stream's dtype (a no-op cast for the fp32 stream)."""
  return sum((y.astype(jnp.float32) for y in ys_BTD), x_BTD.astype(jnp.float32)).astype(x_BTD.dtype)


def hidden(params, tokens_BT, cfg):
  """tokens B x T -> final-normed hidden states B x T x D in the compute dtype."""
  return _hidden(params, tokens_BT, cfg)[0]


def _hidden(params, tokens_BT, cfg, head_w=None):
  """(hidden(), and with head_fp8 its e4m3 copy for the head's dot as (h8, static scale), else None);
  with head_w (loss_fn's head weight) a third item: that weight, which with a tied head and
  norm_kernel.EMBED_GRAD_IN_FIRST_NORM comes out of the first norm (see _hidden_fused_norms)."""
  _check(cfg)
  T = tokens_BT.shape[1]
  if T > cfg.context_length:
    raise UserError(f"sequence length {T} exceeds config.model.context_length={cfg.context_length}; "
                    "feed at most context_length tokens (or raise context_length)")
  dtype = DTYPES[cfg.compute_dtype]
  rope = rope_tables(T, _rope_dim(cfg), cfg.rope_theta)   # shared by all layers
  # The residual stream: fp32 by default (as PyTorch AMP keeps it); bf16 halves the bytes of every
  # norm and residual add, the largest memory traffic of the step (docs/model.md).
  stream_dtype = DTYPES[_option(cfg, "residual_dtype")]
  blocks = params["blocks"]
  if _option(cfg, "norm_backend") == "triton":
    import norm_kernel  # pylint: disable=import-outside-toplevel  (imports anywhere; its kernels need a GPU)
    if norm_kernel.EMBED_IN_FIRST_NORM or norm_kernel.EMBED_GRAD_IN_FIRST_NORM:   # the first norm owns the lookup
      return _hidden_fused_norms(params, tokens_BT, rope, cfg, head_w)
    return _hidden_fused_norms(params, params["embed"][tokens_BT].astype(stream_dtype), rope, cfg, head_w)
  x_BTD = params["embed"][tokens_BT].astype(stream_dtype)
  if cfg.scan_layers:
    x_BTD, _ = jax.lax.scan(lambda x, p: (block(p, x, rope, cfg), None), x_BTD, blocks)
  else:
    for i in range(cfg.n_layers):
      x_BTD = block(jax.tree.map(lambda a, i=i: a[i], blocks), x_BTD, rope, cfg)
  h_BTD = rms_norm(x_BTD, params["final_norm"], dtype)
  out = h_BTD, _head_input_fp8(h_BTD, params["final_norm"], cfg)
  return out if head_w is None else (*out, head_w)


def _head_input_fp8(h_BTD, gain_D, cfg):
  """(e4m3 copy of the final-normed h, its static scale) for head_fp8, made in XLA; else None."""
  if not _option(cfg, "head_fp8"):
    return None
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  q = fp8_mlp.static_scale(gain_D)
  return fp8_mlp.quantize_static(h_BTD, q), q


def _hidden_fused_norms(params, x_BTD, rope, cfg, head_w=None):
  """_hidden()'s layers with each residual add and the norm after it in one kernel: the same
  values as block() (sum rounded to the stream dtype, then normalized), regrouped so every add
  carries the next norm's gain: attn -> (add, mlp_norm) -> mlp -> (add, next attn_norm or final).
  With mlp_fp8, the final norm's kernel also writes the head's e4m3 input (head_fp8). x_BTD is the
  embedded stream, or the tokens [B, T] (integers) for the first norm to look up itself
  (norm_kernel.embed_rms_norm_first). head_w: as in _hidden."""
  import norm_kernel  # pylint: disable=import-outside-toplevel  (UserError without triton/GPU)
  dtype = DTYPES[cfg.compute_dtype]
  attn_fn = _ATTENTION[cfg.attention][1]
  blocks = params["blocks"]
  if _option(cfg, "mlp_fp8") or _option(cfg, "attn_fp8"):
    import fp8_mlp  # pylint: disable=import-outside-toplevel
  # The first norm has no add before it: the kernel's no-add form, its e4m3 copy (attn_fp8) with it.
  q0 = fp8_mlp.static_scale(blocks["attn_norm"][0]) if _option(cfg, "attn_fp8") else None
  # attention_kernel.DH_SCALE='norm' (with the MLP's fused sublayer): each attention hands h's
  # gradient over without x Wqkv's 2^-k, and the norm kernel that made h (the first norm, then each
  # mlp_sublayer's second) applies it as it reads that gradient: no pass over dh of its own.
  dh_mul = 1.0
  if _option(cfg, "attn_fp8_dqkv") and _option(cfg, "mlp_fp8"):
    import attention_kernel  # pylint: disable=import-outside-toplevel
    if attention_kernel.DH_SCALE not in ("norm", "output"):
      raise UserError(f"attention_kernel.DH_SCALE={attention_kernel.DH_SCALE!r} is unknown: use 'norm' (the "
                      "default: the norm kernels apply dh's 2^-k) or 'output' (a multiply on the dot's output)")
    if attention_kernel.DH_SCALE == "norm":
      dh_mul = attention_kernel.dh_raw_mul(x_BTD.shape[0] * x_BTD.shape[1])
  parallel = _option(cfg, "parallel_block")
  # The parallel block's hand-off (fp8_mlp.PARALLEL_HANDOFF): each norm, the first one too, writes
  # the next MLP's row-scaled e4m3 copy and adds that MLP's share of h's gradient in its backward.
  # Its h is not written where no one reads it (PARALLEL_H_UNWRITTEN): attn_fp8_dqkv's attention
  # takes only h's gradient, and the MLP's weight gradient remakes h from the stream.
  handoff = parallel and fp8_mlp.PARALLEL_HANDOFF
  h8_only = handoff and q0 is not None and bool(_option(cfg, "attn_fp8_dqkv"))   # the attention reads h8 alone
  unwritten = h8_only and fp8_mlp.PARALLEL_H_UNWRITTEN
  # W13's weight gradient on the h copy that x Wqkv's reads (PARALLEL_W13_STATIC_H), made here for both.
  static_h = h8_only and fp8_mlp.PARALLEL_W13_STATIC_H
  w8 = fp8_mlp.mlp_weights(blocks["w13"], blocks["w2"]) if handoff else None   # (_check: the all-FP8 MLP)
  first = dict(q_rows=w8[2][0], write_h=not unwritten) if handoff else {}   # q_rows: layer 0's W13 scale
  if jnp.issubdtype(x_BTD.dtype, jnp.integer):
    # With a tied head and EMBED_GRAD_IN_FIRST_NORM the head's weight comes out of the first norm,
    # so the head's share of the table's gradient reaches the norm's backward kernel, which adds
    # the lookup's share to it (norm_kernel.embed_rms_norm_first).
    route = head_w is not None and cfg.tie_embeddings and norm_kernel.EMBED_GRAD_IN_FIRST_NORM
    x_BTD, h_BTD, h8_BTD, *rest = norm_kernel.embed_rms_norm_first(
        params["embed"], x_BTD, blocks["attn_norm"][0], DTYPES[_option(cfg, "residual_dtype")], dtype, q0,
        head_w.dtype if route else None, dh_mul, **first)
    if route:
      assert head_w.shape == params["embed"].shape, "head_w must be the tied head's weight, params['embed'] cast"
      head_w, rest = rest[0], rest[1:]
  else:
    x_BTD, h_BTD, h8_BTD, *rest = norm_kernel.rms_norm_first(x_BTD, blocks["attn_norm"][0], dtype, q0, dh_mul,
                                                             **first)
  h_mlp, h8r, hs, rstd_in = rest if handoff else (None,) * 4
  h8 = None if q0 is None else (h8_BTD, q0)
  wq8 = None
  if _option(cfg, "mlp_fp8") or h8 is not None:
    if fp8_mlp.STACKED_WEIGHTS:   # every layer's e4m3 weights in a few passes, before the loop
      if _option(cfg, "mlp_fp8") and w8 is None:
        w8 = fp8_mlp.mlp_weights(blocks["w13"], blocks["w2"])
      if h8 is not None:
        # Layer i's h8 has the static scale of its own attention norm's gain.
        qh = jax.vmap(fp8_mlp.static_scale)(blocks["attn_norm"]) if fp8_mlp.DH_WEIGHT_AHEAD else None
        wq8 = fp8_mlp.qkv_weights(blocks["wqkv"].reshape(cfg.n_layers, x_BTD.shape[-1], -1), qh,
                                  fp8_dh=bool(_option(cfg, "attn_fp8_dqkv")))
  if parallel and not handoff:   # layer 0's MLP copy of h, with row scales (the later ones: each norm's)
    w8 = fp8_mlp.mlp_weights(blocks["w13"], blocks["w2"]) if w8 is None else w8   # (_check: the all-FP8 MLP)
    h8r, hs = fp8_mlp.quantize_rows(jax.lax.stop_gradient(h_BTD).reshape(-1, h_BTD.shape[-1]))
    hs = hs * w8[2][0].reshape(())
  for i in range(cfg.n_layers):
    p = jax.tree.map(lambda a, i=i: a[i], blocks)
    h8_i = h8 if wq8 is None else (*h8, tuple(a[i] for a in wq8))
    if dh_mul != 1.0 or static_h:   # (_mha's dh_raw, h8_DN)
      h8_i = (*h8[:2], None if wq8 is None else h8_i[2], dh_mul != 1.0)
    if static_h:
      import swiglu_kernel  # pylint: disable=import-outside-toplevel
      h8_i = (*h8_i, swiglu_kernel.transpose_fp8(jax.lax.stop_gradient(h8[0]).reshape(-1, h8[0].shape[-1])))
    attn_BTD = attn_fn(p, h_BTD, rope, cfg, dtype, h8_i)
    last = i + 1 == cfg.n_layers
    gain = params["final_norm"] if last else blocks["attn_norm"][i + 1]
    if parallel:
      # The MLP reads the h the attention read; the norm after both writes the next layer's h with
      # both e4m3 copies (the attention's, one scale; the MLP's, scales per row).
      wants_h8 = _option(cfg, "head_fp8") if last else h8 is not None
      q_next = fp8_mlp.static_scale(gain) if wants_h8 else None
      # What W13's weight gradient reads: h's static copy token-last, the stream h is remade from, or h.
      h_from = (h8_i[4], h8[1]) if static_h else (rstd_in, p["attn_norm"]) if unwritten else None
      x_BTD, h_next, h8_next, h_mlp, h8r, hs, rstd_in = fp8_mlp.parallel_sublayer(
          x_BTD, attn_BTD, h_mlp if handoff else h_BTD, h8r, hs, h_from, p["w13"], p["w2"], gain, q_next,
          None if last else w8[2][i + 1], tuple(a[i] for a in w8), dtype, not last,
          bool(_option(cfg, "mlp_fp8_h13")), bool(_option(cfg, "mlp_fp8_da")), 1.0 if last else dh_mul, dh_mul,
          handoff, not (unwritten and not last), static_h)
      h_BTD, h8 = h_next, None if h8_next is None else (h8_next, q_next)
      continue
    if _option(cfg, "mlp_fp8"):
      # The add, the norm, the MLP and the next add + norm in one custom VJP: the FP8 casts ride
      # in the norm and SwiGLU kernels (fp8_mlp.py), the next attention's e4m3 input with them.
      # The next attention's e4m3 input (attn_fp8), or after the last layer the head's (head_fp8).
      wants_h8 = _option(cfg, "head_fp8") if last else h8 is not None
      q_next = fp8_mlp.static_scale(gain) if wants_h8 else None
      x_BTD, h_BTD, *h8_next = fp8_mlp.mlp_sublayer(
          x_BTD, attn_BTD, p["mlp_norm"], p["w13"], p["w2"], gain, dtype, bool(_option(cfg, "mlp_fp8_w2")), q_next,
          None if w8 is None else tuple(a[i] for a in w8), not last,   # the last x_BTD is None: unused
          bool(_option(cfg, "mlp_fp8_wgrad")), bool(_option(cfg, "mlp_fp8_wgrad_w2")), bool(_option(cfg, "mlp_fp8_h13")),
          bool(_option(cfg, "mlp_fp8_da")), 1.0 if last else dh_mul)
      h8 = (h8_next[0], q_next) if h8_next else None
      continue
    x_BTD, h_BTD = norm_kernel.add_rms_norm(x_BTD, attn_BTD, p["mlp_norm"], dtype)
    x_BTD, h_BTD = norm_kernel.add_rms_norm(x_BTD, swiglu(p, h_BTD, dtype, _option(cfg, "swiglu_backend")), gain,
                                            dtype)
    h8 = _head_input_fp8(h_BTD, gain, cfg) if last else _attn_input_fp8(h_BTD, gain, cfg)
  return (h_BTD, h8) if head_w is None else (h_BTD, h8, head_w)


def _head(params, cfg):
  """(einsum spec, weight) of the LM head: the embedding itself when tied."""
  dtype = DTYPES[cfg.compute_dtype]
  if cfg.tie_embeddings:
    return "btd,vd->btv", params["embed"].astype(dtype)
  return "btd,dv->btv", params["lm_head"].astype(dtype)


def forward(params, tokens_BT, cfg):
  """tokens B x T (int) -> fp32 logits B x T x V (bf16 operands, fp32 accumulation and output)."""
  spec, w = _head(params, cfg)
  logits_BTV = jnp.einsum(spec, hidden(params, tokens_BT, cfg), w, preferred_element_type=jnp.float32)
  return softcap(logits_BTV, _option(cfg, "logit_softcap"))


def softcap(logits, cap):
  """cap * tanh(logits / cap) in fp32 (Gemma 2): logits smoothly bounded to (-cap, cap); cap 0 = off."""
  if not cap:
    return logits
  return cap * jnp.tanh(logits.astype(jnp.float32) / cap)


def loss_fn(params, tokens_BT, targets_BT, cfg):
  """Mean next-token cross-entropy, in fp32 via logsumexp."""
  spec, w = _head(params, cfg)
  h_BTD, h8, w = _hidden(params, tokens_BT, cfg, head_w=w)
  cap = float(_option(cfg, "logit_softcap"))
  if _option(cfg, "xent_backend") == "triton":
    import xent_kernel  # pylint: disable=import-outside-toplevel  (UserError without triton/GPU)
    return xent_kernel.head_cross_entropy(spec, h_BTD, w, targets_BT.astype(jnp.int32), cap, h8)
  return _head_cross_entropy(spec, h_BTD, w, targets_BT.astype(jnp.int32), cap, h8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _head_cross_entropy(spec, h_BTD, w, targets_BT, cap=0.0, h8=None):
  """mean(logsumexp(z) - z[target]), z = softcap(einsum(spec, h, w), cap); reductions in fp32.
  With h8 = (e4m3 copy of h, its static scale) (head_fp8), the logits come from fp8_mlp.head_logits."""
  return _head_cross_entropy_fwd(spec, h_BTD, w, targets_BT, cap, h8)[0]


def _head_logits(spec, h_BTD, w, h8):
  """(the logits as stored, in the compute dtype, and their scale: fp32 [1] with h8, else 1.0)."""
  if h8 is None:
    return jnp.einsum(spec, h_BTD, w), 1.0
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  w_VD = w if spec.endswith("vd->btv") else w.T
  raw_NV, xs = fp8_mlp.head_logits(h8[0].reshape(-1, h8[0].shape[-1]), h8[1], w_VD)
  return raw_NV.reshape(*h_BTD.shape[:-1], -1), xs


def _head_cross_entropy_fwd(spec, h_BTD, w, targets_BT, cap=0.0, h8=None):
  # The logits are stored in the compute dtype (bf16 on GPU, as under PyTorch AMP): they are the
  # largest tensor of the step and are read three times; fp32 storage cost 0.7 ms/step (5.5%) on
  # the H100. The logsumexp and the loss are still computed in fp32 (docs/model.md). With a
  # softcap the raw logits are what is stored; the cap is applied in fp32 on each read.
  logits_BTV, xs = _head_logits(spec, h_BTD, w, h8)
  logits32_BTV = softcap(logits_BTV.astype(jnp.float32) * xs, cap)
  lse_BT = jax.nn.logsumexp(logits32_BTV, axis=-1)
  target_BT = jnp.take_along_axis(logits32_BTV, targets_BT[..., None], axis=-1)[..., 0]
  h8_res = None if h8 is None else (xs, h8[1])
  return jnp.mean(lse_BT - target_BT), (h_BTD, w, targets_BT, logits_BTV, lse_BT, h8_res)


def _head_cross_entropy_bwd(spec, cap, res, g):
  # Written by hand for speed (the B x T x V logits are the largest tensor of the step): one fused
  # pass makes d(loss)/d(logits) = (softmax - onehot) * g/N directly in the compute dtype, so both
  # head matmuls of the backward run in bf16. Plain autodiff would make it in fp32 over several
  # passes and run those matmuls in fp32. With head_fp8 the gradient is that of the same formula
  # with h w in bf16 (the e4m3 dot is the forward's alone), so nothing flows to h8.
  h_BTD, w, targets_BT, logits_BTV, lse_BT, h8_res = res
  V = logits_BTV.shape[-1]
  z_BTV = softcap(logits_BTV.astype(jnp.float32) * (1.0 if h8_res is None else h8_res[0]), cap)
  p_BTV = jnp.exp(z_BTV - lse_BT[..., None])
  onehot_BTV = targets_BT[..., None] == jnp.arange(V, dtype=jnp.int32)
  d_BTV = (p_BTV - onehot_BTV) * (g / targets_BT.size)
  if cap:
    # Chain rule through z = cap * tanh(x / cap): dz/dx = 1 - (z / cap)^2, from the fp32 z just
    # recomputed in this same pass. Storing the capped logits in bf16 instead would lose most of
    # this factor's precision where tanh saturates, and would save no memory traffic.
    d_BTV = d_BTV * (1.0 - jnp.square(z_BTV / cap))
  d_BTV = d_BTV.astype(h_BTD.dtype)
  _, vjp = jax.vjp(lambda h, w: jnp.einsum(spec, h, w), h_BTD, w)
  d_h8 = None if h8_res is None else (jnp.zeros(h_BTD.shape, jnp.float8_e4m3fn), jnp.zeros_like(h8_res[1]))
  return (*vjp(d_BTV), None, d_h8)


_head_cross_entropy.defvjp(_head_cross_entropy_fwd, _head_cross_entropy_bwd)


# ----------------------------------------------------------------------------- FLOPs


def matmul_params(cfg):
  """Weights that enter a matmul per token: all layer matrices plus the LM head (D x V, tied or not)."""
  D, H, F, V, L = cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.vocab_size, cfg.n_layers
  K = D // H
  if cfg.attention == "mla":
    C, R = cfg.kv_lora_rank, cfg.rope_head_dim
    attn = D * H * (K + R) + D * (C + R) + C * 2 * H * K + H * K * D
  else:
    attn = 4 * D * H * K
  return L * (attn + 3 * D * F) + D * V


def flops_per_token(cfg, seq_len):
  """Training FLOPs per token (forward + backward) at sequence length T = seq_len.

  6 * N_matmul + attention, where N_matmul = L*(4*D*H*K + 3*D*F) + D*V (MHA) and the attention
  term counts QK^T and PV: forward 2*T*H*K each per token and layer, x3 for forward + backward,
  halved for the causal mask: 6 * L * T * H * K (= 6*L*T*D). MLA: 3 * L * T * H * (2K + R)
  (scores over K+R dims, values over K). The embedding gather, norms and softmax are not counted.
  """
  L, H = cfg.n_layers, cfg.n_heads
  K = cfg.d_model // H
  qk_dim = K + cfg.rope_head_dim if cfg.attention == "mla" else K
  attn = 3 * L * seq_len * H * (qk_dim + K)
  return float(6 * matmul_params(cfg) + attn)
