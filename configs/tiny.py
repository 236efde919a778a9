"""Tiny model on the bundled TinyStories sample: trains on a laptop CPU in a couple of minutes.

Measured on a (shared) 2-core CPU: 300 steps in 2m45s; loss 9.2 (= ln 10k) at the start, val 4.22 at the end.

  python train.py --config=configs/tiny.py

The sample is prepared automatically on first use (data/tinystories_sample). Every field can be
overridden on the command line, e.g. `--config.train.steps=100`; unknown keys are rejected.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # Model: the fields model.py reads (docs/INTERFACES.md).
  m = config.model = ml_collections.ConfigDict()
  m.vocab_size = 0  # 0 = take it from the data's meta.json; any other value must equal it.
  m.context_length = 256
  m.d_model = 128
  m.n_layers = 4
  m.n_heads = 4
  m.d_ff = 512
  m.rope_theta = 10_000.0
  m.attention = "mha"  # 'mha' | 'mla'
  m.attention_backend = "xla"  # the plain einsum reference runs everywhere, CPU included.
  m.xent_backend = "xla"  # the loss softmax in plain XLA (the Triton kernel needs a GPU).
  m.tie_embeddings = True
  m.compute_dtype = "float32"  # CPUs have no fast bf16 matmul.
  m.norm_backend = "xla"  # the residual add + RMSNorm in plain XLA (the Triton kernel needs a GPU).
  m.swiglu_backend = "xla"  # SwiGLU's backward in plain XLA (the Triton kernel needs a GPU).
  m.mlp_fp8 = False  # the MLP's matmuls in the compute dtype (FP8 pays only on an H100-class GPU).
  m.attn_fp8 = False  # the attention's x Wqkv in the compute dtype, as the MLP's.
  m.attn_fp8_dqkv = False  # with attn_fp8: its backward dots in FP8 too (e5m2 dQKV from the attention)
  m.mlp_fp8_w2 = False  # with mlp_fp8: act x W2 in e4m3 too (unused without it)
  m.mlp_fp8_wgrad = False  # with mlp_fp8: W13's weight gradient in e4m3 too (unused without it)
  m.mlp_fp8_wgrad_w2 = False  # with mlp_fp8 and mlp_fp8_w2: W2's weight gradient in e4m3 too
  m.mlp_fp8_h13 = False  # with mlp_fp8: x W13's output in e4m3 too (the SwiGLU kernels read half the bytes)
  m.mlp_fp8_da = False  # with mlp_fp8: the backward's dY W2^T in e4m3 too (read by the SwiGLU backward)
  m.head_fp8 = False  # the LM head's forward logits in the compute dtype too (an e4m3 dot with True).
  m.residual_dtype = "float32"  # the residual stream; "bfloat16" is faster on the GPU (docs/model.md).
  m.scan_layers = True
  m.kv_lora_rank = 0  # MLA only.
  m.rope_head_dim = 0  # MLA only.
  # Tokens-to-target options (docs/model.md), each off until an experiment shows it helps:
  m.qk_norm = False  # RMSNorm over the head dim of q and k (learned gains) before RoPE; MHA only.
  m.zero_init_out = False  # the blocks' output projections wo, w2 start at zero (each block starts as identity).
  m.logit_softcap = 0.0  # > 0: logits = c * tanh(logits / c) (Gemma 2 uses 30); 0 = off.
  m.parallel_block = False  # x + attn(n(x)) + mlp(n(x)): one norm a layer (GPT-J, PaLM).

  # Data: a directory made by data.py (train.bin, val.bin, meta.json, tokenizer.json).
  d = config.data = ml_collections.ConfigDict()
  d.dataset = "tinystories_sample"  # prepared automatically when d.dir is missing (no download).
  d.dir = "data/tinystories_sample"
  d.tokenizer_path = ""  # filled by train.py from d.dir, stored in checkpoints for sample.py.
  d.tokenizer_sha256 = ""  # filled by train.py from meta.json.
  # The train split lives in device memory when it is at most this big; otherwise batches are
  # gathered on the host from the memory-mapped file (same windows, slower).
  d.on_device_max_mb = 4096

  # Training.
  t = config.train = ml_collections.ConfigDict()
  t.batch_size = 8  # sequences per step (global, over all devices); ~0.45 s/step on 2 cores.
  t.microbatches = 1  # gradient accumulation: batch_size is split into this many sequential parts.
  t.steps = 300
  t.lr = 3e-3  # small models tolerate a high peak learning rate.
  t.min_lr = 3e-4
  t.warmup_steps = 30
  t.schedule = "cosine"  # 'cosine' | 'wsd' | 'constant' (adamw.lr_at).
  t.decay_frac = 0.2  # 'wsd' only: fraction of the steps spent decaying.
  t.weight_decay = 0.1
  t.b1 = 0.9
  t.b2 = 0.95
  t.eps = 1e-8
  t.grad_clip = 1.0  # max global L2 norm of the gradient; 0 = no clipping.
  # 'adamw' | 'muon'. Muon (muon.py) updates the hidden weight matrices with orthogonalised
  # momentum, scaled to AdamW's update RMS so lr, schedule and weight_decay carry over; the
  # embedding, head and norm gains stay on AdamW (b1, b2, eps above). docs/train.md, "Muon".
  t.optimizer = "adamw"
  t.adamw_backend = "xla"  # 'xla' | 'triton' (one Triton kernel per large leaf: GPU only; adamw.py).
  # 'lhs' | 'concurrent': the GPU step's CUDA graph in XLA's one order, or from data dependencies so
  # independent kernels may overlap (train.COMMAND_BUFFER_MODES); the CPU ignores it.
  t.command_buffer_mode = "lhs"
  # AdamW's moments stored in "float32" or "bfloat16" (20 instead of 28 bytes a parameter moved by
  # the update; fp32 arithmetic either way; needs b1, b2 <= 0.98; adamw.MOMENT_DTYPES).
  t.moment_dtype = "float32"
  t.muon_momentum = 0.95  # Muon's SGD momentum (Jordan 2024; Moonshot 2025).
  t.muon_nesterov = True  # Nesterov momentum: the update uses g + momentum * buffer.
  t.muon_lr_scale = 1.0  # Muon's lr = lr * this (1.0: Moonshot's matched-RMS choice).
  t.muon_ns_dtype = "float32"  # Newton-Schulz matmuls: 'float32' | 'bfloat16' (faster, rounder).
  t.log_every = 10
  t.eval_every = 100
  t.eval_tokens = 32_768  # the first 32k val tokens (of ~97k; 0 = all): a few seconds per eval.
  t.ckpt_every = 100
  t.max_to_keep = 2
  t.seed = 0
  # JAX's persistent compilation cache directory ('' = none); configs/tinystories_h100.py sets one,
  # where the step takes ~40 s to compile. Here it compiles in ~2 s.
  t.compilation_cache_dir = ""
  t.target_val_loss = 0.0  # 0 = off; otherwise stop at the first eval at or below it.
  return config
