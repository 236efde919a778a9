"""The Triton kernel behind xent_kernel.py: cross-entropy and its logits gradient in one pass.

Imports triton at load, so only xent_kernel.py imports it, and only when the kernel is launched.
"""
import triton
import triton.language as tl

from fastmath_triton import LOG2E, exp2 as _exp2


@triton.jit
def _cap(z, SOFTCAP: tl.constexpr):
  """(SOFTCAP * tanh(z / SOFTCAP), its derivative) in fp32 (SOFTCAP > 0)."""
  t = 1.0 - 2.0 / (tl.exp(2.0 * z / SOFTCAP) + 1.0)   # tanh; saturates cleanly at +-1
  return SOFTCAP * t, 1.0 - t * t


@triton.jit
def _units(x_raw, xs, SOFTCAP: tl.constexpr):
  """A block in the units the sweeps work in: the stored value itself (logit = u * xs) without a
  cap, so xs rides in the exponent's FMA; the capped logit (u = logit) with one."""
  x = x_raw.to(tl.float32)
  if SOFTCAP > 0:
    # The ragged block's missing lanes stay -inf (a cap would make them -SOFTCAP and count them).
    x = tl.where(x == -float("inf"), x, _cap(x * xs, SOFTCAP)[0])
  return x


@triton.jit
def _sweep(m_row, s_row, x_raw, xs, k2, SOFTCAP: tl.constexpr):
  """The running (max, sum of exp(logit - max)) of a row after one more block, the max in _units and
  k2 = log2(e) times the logits per unit (xs >= 0 keeps the max where the logits' max is)."""
  x = _units(x_raw, xs, SOFTCAP)
  m_new = tl.maximum(m_row, tl.max(x, 0))
  s_row = s_row * _exp2((m_row - m_new) * k2) + tl.sum(_exp2(x * k2 - m_new * k2), 0)
  return m_new, s_row


@triton.jit
def _grad(x_raw, xs, k2, offset, SOFTCAP: tl.constexpr):
  """exp(logit - lse) * SCALE for a block, as exp2(u k2 - offset), offset = lse log2(e) - log2(SCALE)."""
  x = x_raw.to(tl.float32)
  if SOFTCAP > 0:
    x, dcap = _cap(x * xs, SOFTCAP)
    return _exp2(x * k2 - offset) * dcap
  return _exp2(x * k2 - offset)


@triton.jit
def xent_fwd_kernel(LOGITS, TARGETS, XSCALE, LOSS, DLOGITS, V: tl.constexpr, V_PAD: tl.constexpr,
                    SCALE: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr, TAIL: tl.constexpr,
                    GRAD_TAIL: tl.constexpr, WRITE_GRAD: tl.constexpr):
  """One row: LOSS = logsumexp(x) - x[target]; DLOGITS = (softmax(x) - onehot(target)) * SCALE.

  Rows are V_PAD >= V wide: columns V.. are the padded head's (xent_kernel.py) and are never read;
  their gradient is written as 0, so the backward matmuls can take the padded gradient as it is.

  x = the logits: LOGITS times the one fp32 number at XSCALE (1 for a bf16 head; an FP8 head's
  dequantization scale, fp8_mlp.head_logits), soft-capped when SOFTCAP > 0. DLOGITS is with respect
  to the logits before the cap (the tanh derivative is applied), not to the stored values: what
  the head's bf16 backward matmuls take.

  The row (V logits in the compute dtype) is read twice: the second read, for the gradient, hits
  L2 (a 10k-vocab bf16 row is 20 KB), so DRAM sees one read of the logits and one write of the
  gradient, against XLA's max, sum-exp, gather and gradient passes.

  The row runs as whole BLOCK_V blocks, unmasked, and one ragged block after them, a tile of TAIL
  lanes (the power of two that holds the V % BLOCK_V logits left; GRAD_TAIL for the gradient, which
  also writes the padding's zeros; 0: none), so at V = 10,000 an 8192-wide block and a 2048-lane
  tail waste 240 lanes, not the 6384 of a second whole block. Its missing logits load as -inf,
  whose exp is the 0 both sweeps want.
  Nsight Compute showed the kernel bound by instruction issue before DRAM (docs/model.md), so the
  work per logit is kept to a conversion, a max, an FMA, an exp and an add in the first sweep and
  a conversion, an FMA, an exp and a conversion in the second: the softmax scale rides in the
  exponent, and the one-hot's -SCALE is a single store after the row.
  """
  row = tl.program_id(0).to(tl.int64)
  x_ptr = LOGITS + row * V_PAD
  xs = tl.load(XSCALE)
  c = xs   # logits per unit of _units
  if SOFTCAP > 0:
    c = 1.0
  k2 = c * LOG2E
  cols = tl.arange(0, BLOCK_V)
  V_FULL: tl.constexpr = V - V % BLOCK_V   # logits in whole blocks
  if TAIL > 0:  # the ragged block's load is issued first and lands while the whole blocks run
    tail_cols = tl.arange(0, TAIL)
    x_tail = tl.load(x_ptr + V_FULL + tail_cols, mask=tail_cols < V - V_FULL, other=-float("inf"))
  # The running max and sum are per row, not per lane: one exp per logit in this sweep (a per-lane
  # running max costs two). Every block holds at least one real logit, so m_row is finite after
  # the first, and the first block's rescale is exp(-inf) = 0 times s_row = 0.
  m_row = -float("inf")
  s_row = 0.0
  if V_FULL > 0:
    x_next = tl.load(x_ptr + cols)
    for v0 in range(0, V_FULL, BLOCK_V):
      x_raw = x_next
      # Issue the next block's load before this block's math: two loads in flight per row.
      x_next = tl.load(x_ptr + v0 + BLOCK_V + cols, mask=v0 + BLOCK_V < V_FULL, other=0.0)
      m_row, s_row = _sweep(m_row, s_row, x_raw, xs, k2, SOFTCAP)
  if TAIL > 0:
    m_row, s_row = _sweep(m_row, s_row, x_tail, xs, k2, SOFTCAP)
  lse = m_row * c + tl.log(s_row)
  target = tl.load(TARGETS + row)
  x_t = tl.load(x_ptr + target).to(tl.float32) * xs
  dcap_t = 1.0
  if SOFTCAP > 0:
    x_t, dcap_t = _cap(x_t, SOFTCAP)
  tl.store(LOSS + row, lse - x_t)
  if WRITE_GRAD:
    d_ptr = DLOGITS + row * V_PAD
    offset = lse * LOG2E - tl.math.log2(tl.full([], SCALE, tl.float32))
    for v0 in range(0, V_FULL, BLOCK_V):
      d = _grad(tl.load(x_ptr + v0 + cols), xs, k2, offset, SOFTCAP)
      tl.store(d_ptr + v0 + cols, d.to(DLOGITS.dtype.element_ty))
    if GRAD_TAIL > 0:  # the ragged block and the padding (gradient 0)
      tail_cols = tl.arange(0, GRAD_TAIL)
      x = tl.load(x_ptr + V_FULL + tail_cols, mask=tail_cols < V - V_FULL, other=-float("inf"))
      d = _grad(x, xs, k2, offset, SOFTCAP)
      tl.store(d_ptr + V_FULL + tail_cols, d.to(DLOGITS.dtype.element_ty), mask=tail_cols < V_PAD - V_FULL)
    # The one-hot part: the target's gradient again, now with the -1. The barrier orders this store
    # after the block store above that wrote the same element from another thread.
    tl.debug_barrier()
    d_t = (tl.math.exp2(x_t * LOG2E - lse * LOG2E) - 1.0) * dcap_t * SCALE
    tl.store(d_ptr + target, d_t.to(DLOGITS.dtype.element_ty))
