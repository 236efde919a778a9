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
the same as the bf16 head's.

triton and jax_triton are imported when the kernel is launched, so this module imports anywhere.
"""
import functools

import jax
import jax.numpy as jnp

import errors

# Logits per loop step (one whole block and the ragged tail for a 10k vocab) and warps: the best of
# 7 on the H100 (bench/dev_memory_kernels.py, twenty-seventh session): 450 us at 32k x 10k against
# 468 at 4096 (the H200's best, 351 us there), 456-608 for the other five; in the step's profile
# 457 vs 493 us. The kernel that spent 37 instructions a logit was best at 2048 (issue-bound); at
# ~10 a logit (xent_kernel_triton.py) it is DRAM-bound, and fewer, wider blocks keep more bytes in
# flight.
BLOCK_V, NUM_WARPS = 8192, 4
# The head's matmuls see the vocabulary padded to a multiple of this (zero weight rows, logits
# never read, gradient 0): cuBLAS's tiles fit 10,112 columns and not 10,000 (forward 435 vs 480 us
# on the H100, docs/model.md). The parameters keep their real size; only the bf16 copy is padded.
VOCAB_ALIGN = 128
# The backward's dX = dlogits w reads a transposed copy of w, [D, V_pad], made behind an
# optimization_barrier so XLA cannot fold the transpose back into the dot (10 MB, made off the
# critical path). B128 steps ran 0.02-0.17 ms faster in 5 of 5 interleaved pairs on the H100 (8.227
# vs 8.291 ms mean; twenty-ninth session, docs/model.md). Why is not settled: alone, every layout
# of the dot runs at ~805 TFLOP/s (bench/dev_head_layouts.py), and inside the step, beside the
# weight gradient's dot, cuBLAS's kernel for it took 629-700 us in either layout over several
# compiles. False: the dot as autodiff writes it.
DX_WEIGHT_T = True


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def head_cross_entropy(spec, h_BTD, w, targets_BT, softcap, h8=None):
  """mean(logsumexp(logits) - logits[target]) with logits = einsum(spec, h, w) in h's dtype,
  soft-capped to softcap * tanh(logits / softcap) first when softcap > 0. With h8 = (h8_BTD, qh),
  e4m3(h * qh) from the final norm (model.head_fp8), the forward's logits come from an e4m3 dot
  instead; the gradients are still the bf16 dots' with h and w (nothing flows to h8)."""
  logits_NV, V, _, xs = _padded_logits(spec, h_BTD, w, h8)
  loss_N, _ = _rows(logits_NV, targets_BT.reshape(-1), softcap, False, vocab=V, xscale=xs)
  return jnp.mean(loss_N)


def _fwd(spec, h_BTD, w, targets_BT, softcap, h8=None):
  logits_NV, V, w_pad, xs = _padded_logits(spec, h_BTD, w, h8)
  loss_N, d_NV = _rows(logits_NV, targets_BT.reshape(-1), softcap, True, vocab=V, xscale=xs)
  h8_like = None if h8 is None else (jnp.zeros((0,), h8[0].dtype), h8[1])   # h8 has h's shape
  return jnp.mean(loss_N), (h_BTD, w_pad, d_NV.reshape(*h_BTD.shape[:-1], -1), jnp.zeros((0, V), w.dtype), h8_like)


def _bwd(spec, softcap, res, g):  # pylint: disable=unused-argument
  # d_BTV already holds (softmax - onehot) / N, 0 in the padded columns; the cotangent g (1 for a
  # plain loss) scales the small results rather than the B x T x V gradient.
  h_BTD, w_pad, d_BTV, v_like, h8_like = res
  _, vjp = jax.vjp(lambda h, w: jnp.einsum(spec, h, w), h_BTD, w_pad)
  dh_BTD, dw = vjp(d_BTV)
  if DX_WEIGHT_T:
    w_DV = jax.lax.optimization_barrier(jnp.moveaxis(w_pad, _vocab_axis(spec), -1))
    dh_BTD = jnp.einsum("btv,dv->btd", d_BTV, w_DV)
  dw = jax.lax.slice_in_dim(dw, 0, v_like.shape[1], axis=_vocab_axis(spec))
  return (dh_BTD * g.astype(dh_BTD.dtype), dw * g.astype(dw.dtype), None, _zero_cotangents(h8_like, h_BTD.shape))


def _zero_cotangents(h8_like, shape_BTD):
  """The (zero) cotangents of h8 = (e4m3 copy of h, its scale), or None without it."""
  if h8_like is None:
    return None
  return jnp.zeros(shape_BTD, h8_like[0].dtype), jnp.zeros_like(h8_like[1])


head_cross_entropy.defvjp(_fwd, _bwd)
