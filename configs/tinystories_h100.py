"""The speedrun: a TinyStories model to val loss 1.45 as fast as possible on one H100.

  python data.py --dataset=tinystories --out_dir=data/tinystories   # once
  python train.py --config=configs/tinystories_h100.py

Starting point from the issue (tuned later): d512, 4 layers, 16 heads, SwiGLU 1344, context 256.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  m = config.model = ml_collections.ConfigDict()
  m.vocab_size = 10_000  # must equal data/tinystories/meta.json's vocab_size.
  m.context_length = 256
  m.d_model = 512
  m.n_layers = 4
  m.n_heads = 16
  m.d_ff = 1344  # ~8/3 * d_model, rounded to a multiple of 64.
  m.rope_theta = 10_000.0
  m.attention = "mha"  # 'mha' | 'mla'
  # Our Triton flash attention with RoPE and the q/k/v split in its custom VJP (attention_kernel.py):
  # 10.64 vs 11.67 ms/step with cuDNN at B128 on the H100 (docs/model.md, "Fused kernels"). Needs the
  # GPU install line of README.md; 'cudnn' needs nothing extra.
  m.attention_backend = "triton"
  m.xent_backend = "triton"  # xent_kernel.py: one pass over the logits; 10.83 vs 11.14 ms/step with 'xla'.
  m.tie_embeddings = True
  m.compute_dtype = "bfloat16"  # fp32 master weights, bf16 matmuls.
  # Each residual add and the RMSNorm after it in one Triton kernel each way (norm_kernel.py); 'xla'
  # runs anywhere. With the bf16 stream below: 10.38 vs 10.78 / 10.89 ms per B128 step on the H100
  # (bench/results/norm_kernel_residual_h100/).
  m.norm_backend = "triton"
  # SwiGLU's backward (both gate gradients) as one Triton kernel (swiglu_kernel.py); 'xla' runs anywhere.
  m.swiglu_backend = "triton"
  # Three of the MLP's six matmuls in FP8 e4m3, the casts inside the norm and SwiGLU kernels
  # (fp8_mlp.py): 8.77 vs 9.00 ms per B128 step on the H200 (medians of 6), val loss at 200 steps
  # on the bundled sample no worse than bf16 (2 seeds); bench/results/fp8_mlp_h200/, docs/model.md.
  m.mlp_fp8 = True
  # The attention's x Wqkv in e4m3 too, its scale folded into the RoPE tables and Wo (fp8_mlp.qkv_dot),
  # every layer's e4m3 Wqkv made before the layer loop: sustained 200-step loops 8.556 / 8.566 vs
  # 8.626 / 8.570 ms, 10-step loops 8.37 / 8.36 vs 8.50 / 8.49 (H200, interleaved; same kernel time
  # at full clock, 7.859 vs 7.854 ms, but the board runs at its 700 W cap and the e4m3 dots leave
  # it a little more clock); val loss at 200 steps 3.020 / 2.998 vs 3.018 / 3.010 (2 seeds).
  # bench/results/h200_session13/, docs/model.md.
  m.attn_fp8 = True
  # A fourth of the MLP's dots in e4m3: the forward's act x W2, its operand written by a Triton gate
  # kernel (swiglu_kernel.forward_fp8; unused when mlp_fp8 is off). Sustained 200-step loops
  # 8.80 / 8.83 vs 8.89 / 8.88 ms and 10-step steps 8.37 vs 8.42 ms (H200, two machines, interleaved),
  # kernels at full clock within +-0.04 ms: the FP8 dot spends less of the 700 W cap. Val loss at
  # 200 steps 3.026 / 2.988 vs 3.003 / 2.995 (2 seeds, within their spread). bench/results/h200_session15/.
  m.mlp_fp8_w2 = True
  # W13's weight gradient h^T dH13 as an e4m3 dot as well (fp8_mlp.wgrad_fp8): each token's gradient
  # scale moves into h's copy, both operands are written token-last by a Triton pass
  # (swiglu_kernel.transpose_fp8), as cuBLASLt's FP8 path needs for a sum over tokens, and the SwiGLU
  # backward drops its bf16 dH13. B128 8.04 / 8.03 vs 8.17 / 8.14 ms a step (H200, interleaved); val
  # loss at 200 steps 3.023 / 2.991 vs 3.028 / 2.988 (2 seeds). bench/results/h200_session20/.
  m.mlp_fp8_wgrad = True
  # W2's weight gradient act^T dY as an e4m3 dot too (fp8_mlp.wgrad_fp8): it reads the forward's e4m3
  # act (whose row scale moves into dY's token-last copy), so the SwiGLU forward writes no bf16 act.
  # H100, interleaved: 8.53 / 8.56 vs 8.58 / 8.60 ms a step (twenty-third session), 8.48 vs 8.54
  # (twenty-second); val loss at 200 steps 3.018 / 2.986 vs 3.032 / 2.982 and 3.018 / 3.015 vs
  # 3.030 / 2.985 (2 seeds each, within their spread). bench/results/h100_session23/, docs/model.md.
  m.mlp_fp8_wgrad_w2 = True
  # x W13's output in e4m3 from cuBLASLt's epilogue (fp8_mlp.dot8_e4m3), its scale bounded from the weight
  # alone (fp8_mlp.out_scale), so the dot writes and both SwiGLU kernels read half the bytes: B128
  # 8.223 / 8.201 vs 8.488 / 8.428 ms a step (H100, interleaved); val loss at 200 steps, 5 seeds, mean
  # 3.002 vs 2.997 (per-seed differences +0.032 .. -0.009). bench/results/h100_session34/, docs/model.md.
  m.mlp_fp8_h13 = True
  # The backward's dY W2^T in e4m3 the same way (its scale from W2), read by the SwiGLU backward. Off:
  # within noise when cuBLASLt runs that dot (H100 10-step loops 8.097 / 8.106 vs 8.136 / 8.171 ms,
  # 200-step 8.214 / 8.211 vs 8.223 / 8.237; val loss at 200 steps +0.002 +- 0.003 over 5 seeds), and
  # XLA's autotuner may give it to a Triton GEMM 2.5x slower (+0.35 ms a step on one machine).
  # bench/results/h100_session36/, docs/model.md "Thirty-sixth session".
  m.mlp_fp8_da = False
  # The LM head's forward logits from an e4m3 dot (fp8_mlp.head_logits): the last fused norm writes
  # the head's e4m3 input, the loss kernel applies the scale as it reads the logits; the head's two
  # gradient dots stay bf16. B128 8.50 / 8.49 vs 8.69 / 8.63 ms a step (H100, interleaved); val loss
  # at 200 steps 3.013 / 2.979 vs 3.014 / 2.995 (2 seeds). bench/results/h100_session22/.
  m.head_fp8 = True
  # x Wqkv's two backward dots in FP8 as well (attention_kernel.flash_attention_qkv_fp8): the
  # attention's backward kernels store dQKV in e5m2 (one scale from the forward's, no measurement) in
  # both layouts the two cuBLASLt FP8 dots read. B128 -0.047 ms a step, faster in 6 of 6 interleaved
  # pairs (H100); val loss at 200 steps 3.0076 vs 3.0110 (4 seeds). bench/results/h100_session43/,
  # docs/model.md "Forty-third session".
  m.attn_fp8_dqkv = True
  # The residual stream between blocks in bf16 (each add summed in fp32, rounded once): -0.3 ms a
  # step; val loss equal within seed noise over 300 steps at two recipes (docs/model.md). "float32"
  # is the conservative choice for runs much longer than those checks.
  m.residual_dtype = "bfloat16"
  # Unrolled layers: on the H100 the loss+grad at B128 took 12.6 ms unrolled vs 18.4 ms under
  # lax.scan (the scan's backward accumulates into stacked weight grads); compile is a bit slower.
  m.scan_layers = False
  m.kv_lora_rank = 0  # MLA only.
  m.rope_head_dim = 0  # MLA only.
  # Tokens-to-target options (docs/model.md), each off until an experiment shows it helps:
  # RMSNorm over the head dim of q and k (learned gains) before RoPE; MHA only, needs attn_fp8 off.
  # At 200 steps on the bundled sample: val loss 3.003 / 3.017 vs 3.024 / 2.988 (2 seeds, within
  # their spread), +1.15 ms a step (off the fused RoPE attention). bench/results/h100_session33/.
  m.qk_norm = False
  # wo and w2 start at zero: val loss after 200 steps at this shape on the bundled real text 3.11 vs
  # 3.43 (2 seeds each; bench/results/recipe_h100_sample/), no throughput cost (docs/SPEEDRUN_BENCHMARK.md).
  m.zero_init_out = True
  # > 0: logits = c * tanh(logits / c) (Gemma 2 uses 30); 0 = off. c = 30 at 200 steps: 3.007 / 2.989
  # vs 3.024 / 2.988 (2 seeds), +0.35 ms a step (the tanh in the loss kernel). h100_session33/.
  m.logit_softcap = 0.0
  # x + attn(n(x)) + mlp(n(x)), one norm a layer (GPT-J, PaLM; no mlp_norm): 4 add + norm kernels fewer
  # each way, the two halves free to overlap. B128 7.83 / 7.69 / 7.76 vs 7.99 / 7.94 / 7.95 ms a step
  # (H100, interleaved: -0.20 ms, 4.22M tokens/s); val loss at 200 steps on the bundled sample
  # 2.916 / 2.926 / 2.924 vs 3.031 / 3.005 / 2.992 (3 seeds: better on each, at every eval). Only
  # that short horizon is measured (docs/model.md, "Fifty-second session"; bench/results/h100_session52/).
  m.parallel_block = True

  d = config.data = ml_collections.ConfigDict()
  d.dataset = "tinystories"  # too big to prepare implicitly: train.py prints the command.
  d.dir = "data/tinystories"
  d.tokenizer_path = ""  # filled by train.py from d.dir.
  d.tokenizer_sha256 = ""  # filled by train.py from meta.json.
  d.on_device_max_mb = 4096  # the uint16 train split is ~1.1 GB: it lives on the GPU.

  t = config.train = ml_collections.ConfigDict()
  t.batch_size = 128  # 128 x 256 = 32k tokens per step.
  t.microbatches = 1
  t.steps = 5000  # ~164M tokens; the run usually stops earlier at target_val_loss.
  t.lr = 1e-3  # best of 5e-4, 7e-4, 1e-3, 2e-3 (and 4e-3 with cosine) in the same 200-step runs.
  t.min_lr = 1e-4
  t.warmup_steps = 200
  # Warmup-stable-decay: the peak lr until the last decay_frac of the steps, then linear to min_lr.
  # At this shape on the bundled real text it ends 200 steps at val loss 3.03 / 3.00 vs cosine's
  # 3.12 / 3.10 (two seeds each, zero_init_out on; bench/results/recipe_h100_sample_lr_batch/).
  # Its loss before the decay is above cosine's, so size `steps` for the decay to end at the target.
  t.schedule = "wsd"  # 'cosine' | 'wsd' | 'constant'
  t.decay_frac = 0.2  # 'wsd' only.
  t.weight_decay = 0.1
  t.b1 = 0.9
  t.b2 = 0.95
  t.eps = 1e-8
  t.grad_clip = 1.0
  # 'adamw' | 'muon'. Muon (muon.py) updates the hidden weight matrices with orthogonalised
  # momentum, scaled to AdamW's update RMS so lr, schedule and weight_decay carry over; the
  # embedding, head and norm gains stay on AdamW (b1, b2, eps above). docs/train.md, "Muon".
  t.optimizer = "adamw"
  # AdamW's update as one Triton kernel per large leaf (adamw_kernel_triton.py), which also sums the
  # new parameters' squares for the finiteness check; 'xla' runs anywhere. Same values up to fp32
  # rounding (tests/test_adamw.py). XLA's update fusions 207 us -> 134 us, less 36 us of new passes
  # (H200); with the first norm in the norm kernel, B128 7.88-7.91 vs 7.95-7.96 ms interleaved
  # (bench/results/h200_session19/).
  t.adamw_backend = "triton"
  # The step's CUDA graph built from its kernels' data dependencies ('concurrent') instead of XLA's
  # one scheduled order ('lhs'): kernels that do not depend on each other may overlap (the weight
  # casts before the first layer, parts of the backward). Same values. B128 8.30 / 8.33 / 8.36 / 8.33
  # vs 8.40 / 8.51 / 8.45 / 8.33 ms a step (H100, interleaved, two machines): -0.09 ms on average.
  # bench/results/h100_session26/.
  t.command_buffer_mode = "concurrent"
  # AdamW's moments stored in "float32" or "bfloat16" (20 instead of 28 bytes a parameter moved by
  # the update; fp32 arithmetic either way; needs b1, b2 <= 0.98; adamw.MOMENT_DTYPES). bf16 saves
  # 0.05 ms a step (H100: 8.21 / 8.23 vs 8.27 / 8.28 ms interleaved) but its val loss at 200 steps was
  # above fp32's at every eval of both seeds (3.027 / 3.017 vs 3.022 / 2.997): not worth the tokens.
  # bench/results/h100_session28/.
  t.moment_dtype = "float32"
  t.muon_momentum = 0.95  # Muon's SGD momentum (Jordan 2024; Moonshot 2025).
  t.muon_nesterov = True  # Nesterov momentum: the update uses g + momentum * buffer.
  # Muon's lr = lr * this (weight decay included). Tuned at this shape (H100, 200 steps on the bundled
  # sample, 3 seeds): 8 beat 2, 4 and 16 at equal steps (val loss -0.050 vs AdamW), and at equal wall
  # time (185 Muon steps of 8.59 ms vs 200 AdamW steps of 7.96) it was -0.029, ahead on every seed.
  # AdamW stays the default: that proxy is 6 epochs of 1.1M tokens at loss ~3, not the 1.45 regime,
  # and 8x AdamW's decay is untested over 5,000 steps. bench/results/h100_session51/, docs/train.md.
  t.muon_lr_scale = 8.0
  t.muon_ns_dtype = "bfloat16"  # Newton-Schulz matmuls: 'float32' | 'bfloat16' (faster, rounder).
  t.log_every = 50
  t.eval_every = 250
  # A fixed 2M-token prefix of the val split keeps each eval short; set 0 for the whole split in
  # the final number.
  t.eval_tokens = 2_000_000
  t.ckpt_every = 1000
  t.max_to_keep = 2
  t.seed = 0
  # JAX's persistent compilation cache: a rerun of the same config loads the compiled step from
  # here (H100: the step's 37-40 s of XLA compile -> 0.2 s; bench/results/h100_session31/). The key
  # is the whole program, so a code or config change compiles afresh. '' compiles every time.
  t.compilation_cache_dir = "~/.cache/tinylm/jax"
  t.target_val_loss = 1.45  # stop at the first eval at or below it; 0 = off.
  return config
