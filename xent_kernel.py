"""Cross-entropy of the LM head with a Triton kernel for the softmax part (model.py's xent_backend='triton').

`head_cross_entropy(spec, h_BTD, w, targets_BT, softcap)` = mean over tokens of logsumexp(z) - z[target],
z = softcap(einsum(spec, h, w)) (z = the logits when softcap is 0), the same value as model.py's XLA
version. The logits matmuls stay with cuBLAS; what the kernel replaces is the softmax work around
them. On the H100 at the speedrun shape (32k tokens x 10k vocab in bf16, 655 MB of logits) XLA
spends ~1 ms a step there: a max pass, a sum-exp pass, a gather and, in the backward, a pass that
reads the logits and writes the gradient.
The kernel reads each row once and, when a gradient is needed, writes d(loss)/d(logits) in the
same pass (docs/model.md has the measurements). The gradient is therefore made in the forward and
kept instead of the logits: same memory, and the backward is just the two matmuls.
With model.head_fp8 the forward's logits come from an e4m3 dot (fp8_mlp.head_logits) whose one
scale the kernel multiplies in as it reads them; the gradient and the two backward matmuls are
the same as the bf16 head's, unless model.head_fp8_bwd: then a second kernel (xent_fp8_grad_kernel)
writes the gradient as the two FP8 copies fp8_mlp.head_grads' dots take, instead of in bf16.

triton and jax_triton are imported when the kernel is launched, so this module imports anywhere.
"""
import functools

import jax
import jax.numpy as jnp

import errors
import norm_kernel

# Logits per loop step (3 steps for a 10k vocab) and warps: the best of 7 on the H200
# (bench/dev_memory_kernels.py): 351 us at 32k x 10k, against 362-472 us for the other six. The
# kernel that spent 37 instructions a logit was best at 2048 (issue-bound); at ~10 a logit
# (xent_kernel_triton.py) it is DRAM-bound, and fewer, wider blocks keep more bytes in flight.
BLOCK_V, NUM_WARPS = 4096, 4
# The head's matmuls see the vocabulary padded to a multiple of this (zero weight rows, logits
# never read, gradient 0): cuBLAS's tiles fit 10,112 columns and not 10,000 (forward 435 vs 480 us
# on the H100, docs/model.md). The parameters keep their real size; only the bf16 copy is padded.
VOCAB_ALIGN = 128


def _triton():
  return errors.triton_kernels("xent_kernel_triton", "xent_backend")


def tails(V, V_PAD, block_v):
  """The kernel's ragged-block tiles: the powers of two that hold what whole blocks leave of the V
  logits (TAIL) and of the V_PAD gradient columns (GRAD_TAIL); 0 where nothing is left."""
  pow2 = lambda n: 0 if n <= 0 else 1 << (n - 1).bit_length()  # pylint: disable=unnecessary-lambda-assignment
  full = V - V % block_v
  return dict(BLOCK_V=block_v, TAIL=pow2(V - full), GRAD_TAIL=pow2(V_PAD - full))


def _rows(logits_NV, targets_N, softcap, write_grad, scale=None, vocab=None, xscale=None):
  """(loss_N fp32, dlogits_NV in the logits dtype, already times scale: 1/N unless given) from the
  kernel; with vocab < V only the first vocab columns are logits (the rest: gradient 0). xscale
  (fp32 [1]): the logits are logits_NV * xscale (an FP8 head's raw dot), and dlogits is with respect
  to those."""
  jt, kern = _triton()
  N, V = logits_NV.shape
  xscale = jnp.ones((1,), jnp.float32) if xscale is None else xscale.astype(jnp.float32).reshape(1)
  out_shape = [jax.ShapeDtypeStruct((N,), jnp.float32),
               jax.ShapeDtypeStruct((N, V) if write_grad else (1,), logits_NV.dtype)]
  return jt.triton_call(logits_NV, targets_N.astype(jnp.int32), xscale, kernel=kern.xent_fwd_kernel,
                        out_shape=out_shape, grid=(N,), num_warps=NUM_WARPS, num_stages=1,
                        V=V if vocab is None else vocab, V_PAD=V, SCALE=1.0 / N if scale is None else float(scale),
                        SOFTCAP=float(softcap), WRITE_GRAD=write_grad, **tails(V if vocab is None else vocab, V, BLOCK_V))


# model.head_fp8_bwd: the kernel that writes U's two FP8 copies itself (xent_fp8_grad_kernel), BT
# rows a program; False: the row kernel writes U in bf16 and XLA makes the copies (the measured
# alternative, docs/model.md).
FP8_GRAD_KERNEL = True
# Not yet measured (no GPU in the session that wrote it): BT rows x BLOCK_V a tile, and a persistent
# grid of FP8_PROGRAMS_PER_SM programs a multiprocessor, 8 x 20 KB rows in flight per SM (~21 MB at
# 132 SMs) so the second read of a row still finds it in L2; bench/dev_memory_kernels.py --only=xent_fp8
# sweeps them.
FP8_BT, FP8_BLOCK_V, FP8_WARPS, FP8_PROGRAMS_PER_SM = 8, 1024, 4, 1


def _fp8_rows(logits_NV, targets_N, softcap, vocab, xscale):
  """(loss_N fp32, e4m3(U * DH) [N, V], e5m2(U * DW) [V, N]) for U = softmax - onehot of the first
  vocab columns of logits_NV * xscale (soft-capped with its derivative), 0 in the rest: the
  copies fp8_mlp.head_grad_fp8 makes of U, written by the loss kernel itself."""
  import fp8_mlp  # pylint: disable=import-outside-toplevel
  jt, kern = _triton()
  N, V = logits_NV.shape
  out_shape = [jax.ShapeDtypeStruct((N,), jnp.float32), jax.ShapeDtypeStruct((N, V), fp8_mlp.E4M3),
               jax.ShapeDtypeStruct((V, N), fp8_mlp.E5M2)]
  programs = max(1, min(-(-N // FP8_BT), FP8_PROGRAMS_PER_SM * norm_kernel.sm_count()))
  return jt.triton_call(logits_NV, targets_N.astype(jnp.int32), xscale.astype(jnp.float32).reshape(1),
                        kernel=kern.xent_fp8_grad_kernel, out_shape=out_shape, grid=(programs,),
                        num_warps=FP8_WARPS, num_stages=1, N=N, V=vocab, V_PAD=V, SOFTCAP=float(softcap),
                        DH_SCALE=fp8_mlp.HEAD_DH_SCALE, DW_SCALE=fp8_mlp.HEAD_DW_SCALE, BT=FP8_BT,
                        PROGRAMS=programs, **tails(vocab, V, FP8_BLOCK_V))


def _vocab_axis(spec):
  """The axis of the head weight that runs over the vocabulary ('v' in its part of the einsum spec)."""
  return spec.split(",")[1].split("-")[0].index("v")


def _padded_logits(spec, h_BTD, w, h8=None):
  """(logits [N, V_pad] with V_pad = V rounded up to VOCAB_ALIGN, V, the padded w, their scale):
  the bf16 dot and None, or with h8 = (e4m3 copy of h, its static scale) the FP8 dot's raw output
  and the scale the loss kernel multiplies in (fp8_mlp.head_logits)."""
  axis = _vocab_axis(spec)
  V = w.shape[axis]
  pad = [(0, 0)] * w.ndim
  pad[axis] = (0, -V % VOCAB_ALIGN)
  w_pad = jnp.pad(w, pad)
  if h8 is not None:
    import fp8_mlp  # pylint: disable=import-outside-toplevel
    h8_BTD, qh = h8
    raw_NV, xs = fp8_mlp.head_logits(h8_BTD.reshape(-1, h8_BTD.shape[-1]), qh, w_pad if axis == 0 else w_pad.T)
    return raw_NV, V, w_pad, xs
  logits_BTV = jnp.einsum(spec, h_BTD, w_pad)
  return logits_BTV.reshape(-1, logits_BTV.shape[-1]), V, w_pad, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 6))
def head_cross_entropy(spec, h_BTD, w, targets_BT, softcap, h8=None, fp8_bwd=False):
  """mean(logsumexp(logits) - logits[target]) with logits = einsum(spec, h, w) in h's dtype,
  soft-capped to softcap * tanh(logits / softcap) first when softcap > 0. With h8 = (h8_BTD, qh),
  e4m3(h * qh) from the final norm (model.head_fp8), the forward's logits come from an e4m3 dot
  instead; the gradients are still the bf16 dots' with h and w (nothing flows to h8), unless
  fp8_bwd (model.head_fp8_bwd): then both are FP8 dots on h8, w's e4m3 copy and two FP8 copies of
  d(loss)/d(logits) (fp8_mlp.head_grads)."""
  logits_NV, V, _, xs = _padded_logits(spec, h_BTD, w, h8)
  loss_N, _ = _rows(logits_NV, targets_BT.reshape(-1), softcap, False, vocab=V, xscale=xs)
  return jnp.mean(loss_N)


def _fwd(spec, h_BTD, w, targets_BT, softcap, h8=None, fp8_bwd=False):
  logits_NV, V, w_pad, xs = _padded_logits(spec, h_BTD, w, h8)
  N = logits_NV.shape[0]
  h8_like = None if h8 is None else (jnp.zeros((0,), h8[0].dtype), h8[1])   # h8 has h's shape
  if fp8_bwd:
    import fp8_mlp  # pylint: disable=import-outside-toplevel
    if h8 is None:   # model.py passes the flag only with head_fp8's copy of h
      raise ValueError("head_cross_entropy(fp8_bwd=True) needs h8, the e4m3 copy of h (model.head_fp8)")
    if FP8_GRAD_KERNEL:
      loss_N, u8_NV, u8t_VN = _fp8_rows(logits_NV, targets_BT.reshape(-1), softcap, V, xs)
    else:   # U = softmax - onehot itself (scale 1) in bf16, then XLA's FP8 copies of it
      loss_N, u_NV = _rows(logits_NV, targets_BT.reshape(-1), softcap, True, scale=1.0, vocab=V, xscale=xs)
      u8_NV, u8t_VN = fp8_mlp.head_grad_fp8(u_NV)
    grads = (u8_NV, u8t_VN, h8[0].reshape(N, -1), _vocab_rows(spec, w_pad))
  else:
    loss_N, d_NV = _rows(logits_NV, targets_BT.reshape(-1), softcap, True, vocab=V, xscale=xs)
    grads = (h_BTD, w_pad, d_NV.reshape(*h_BTD.shape[:-1], -1))
  return jnp.mean(loss_N), (grads, jnp.zeros((0, V), w.dtype), h8_like, jnp.zeros(h_BTD.shape[:-1] + (0,), h_BTD.dtype))


def _vocab_rows(spec, w):
  """The head weight as [V, D] (it is [D, V] when untied)."""
  return w if _vocab_axis(spec) == 0 else w.T


def _bwd(spec, softcap, fp8_bwd, res, g):  # pylint: disable=unused-argument
  # The kernel's gradient already holds (softmax - onehot) / N (or, with fp8_bwd, its FP8 copies
  # of softmax - onehot), 0 in the padded columns; the cotangent g (1 for a plain loss) scales the
  # small results rather than the B x T x V gradient.
  grads, v_like, h8_like, bt_like = res
  axis = _vocab_axis(spec)
  if fp8_bwd:
    import fp8_mlp  # pylint: disable=import-outside-toplevel
    import swiglu_kernel  # pylint: disable=import-outside-toplevel
    u8_NV, u8t_VN, h8_ND, w_VD = grads
    # The dots' token-last h and vocabulary-last w copies, by a Triton pass each (16 and 5 MB): XLA's
    # transposes of e4m3 arrays run far below the copy rate (docs/model.md, "Eleventh and twelfth sessions").
    w8_VD, sw = fp8_mlp.quantize_tensor(jax.lax.stop_gradient(w_VD))
    dh_ND, dw_VD = fp8_mlp.head_grads(u8_NV, u8t_VN, swiglu_kernel.transpose_fp8(h8_ND), h8_like[1],
                                      swiglu_kernel.transpose_fp8(w8_VD), sw, g / h8_ND.shape[0])
    dh_BTD = dh_ND.astype(bt_like.dtype).reshape(*bt_like.shape[:-1], -1)
    dw = dw_VD.astype(w_VD.dtype)[:v_like.shape[1]]
    dw = dw if axis == 0 else dw.T
    return (dh_BTD, dw, None, _zero_cotangents(h8_like, dh_BTD.shape))
  h_BTD, w_pad, d_BTV = grads
  _, vjp = jax.vjp(lambda h, w: jnp.einsum(spec, h, w), h_BTD, w_pad)
  dh_BTD, dw = vjp(d_BTV)
  dw = jax.lax.slice_in_dim(dw, 0, v_like.shape[1], axis=axis)
  return (dh_BTD * g.astype(dh_BTD.dtype), dw * g.astype(dw.dtype), None, _zero_cotangents(h8_like, h_BTD.shape))


def _zero_cotangents(h8_like, shape_BTD):
  """The (zero) cotangents of h8 = (e4m3 copy of h, its scale), or None without it."""
  if h8_like is None:
    return None
  return jnp.zeros(shape_BTD, h8_like[0].dtype), jnp.zeros_like(h8_like[1])


head_cross_entropy.defvjp(_fwd, _bwd)
