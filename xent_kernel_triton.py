"""The Triton kernel behind xent_kernel.py: cross-entropy and its logits gradient in one pass.

Imports triton at load, so only xent_kernel.py imports it, and only when the kernel is launched.
"""
import triton
import triton.language as tl


@triton.jit
def _cap(z, SOFTCAP: tl.constexpr):
  """(SOFTCAP * tanh(z / SOFTCAP), its derivative) in fp32; (z, 1) when SOFTCAP is 0."""
  if SOFTCAP > 0:
    t = 1.0 - 2.0 / (tl.exp(2.0 * z / SOFTCAP) + 1.0)   # tanh; saturates cleanly at +-1
    return SOFTCAP * t, 1.0 - t * t
  return z, z * 0.0 + 1.0   # same type as the branch above: Triton checks both


@triton.jit
def xent_fwd_kernel(LOGITS, TARGETS, LOSS, DLOGITS, V: tl.constexpr, V_PAD: tl.constexpr, SCALE: tl.constexpr,
                    SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
  """One row: LOSS = logsumexp(x) - x[target]; DLOGITS = (softmax(x) - onehot(target)) * SCALE.

  Rows are V_PAD >= V wide: columns V.. are the padded head's (xent_kernel.py) and are never read;
  their gradient is written as 0, so the backward matmuls can take the padded gradient as it is.

  x = the logits, soft-capped first when SOFTCAP > 0 (then DLOGITS is with respect to the raw
  logits: the tanh derivative is applied).

  The row (V logits in the compute dtype) is read twice: the second read, for the gradient, hits
  L2 (a 10k-vocab bf16 row is 20 KB), so DRAM sees one read of the logits and one write of the
  gradient, against XLA's max, sum-exp, gather and gradient passes.
  """
  row = tl.program_id(0).to(tl.int64)
  x_ptr = LOGITS + row * V_PAD
  cols = tl.arange(0, BLOCK_V)
  # The running max and sum are per row, not per lane: one exp per logit in this sweep (a per-lane
  # running max costs two, and the exp unit, not DRAM, then bounds the kernel: 3 exps per logit
  # over 328M logits is ~0.24 ms on an H100/H200). Every block holds at least one real logit, so
  # m_row is finite after the first and exp(m_row - m_new) never sees -inf - -inf.
  m_row = -float("inf")
  s_row = 0.0
  x_next = tl.load(x_ptr + cols, mask=cols < V, other=0.0)
  for v0 in range(0, V, BLOCK_V):
    x_raw = x_next
    # Issue the next block's load before this block's math: two loads in flight per row.
    x_next = tl.load(x_ptr + v0 + BLOCK_V + cols, mask=v0 + BLOCK_V + cols < V, other=0.0)
    x, _ = _cap(x_raw.to(tl.float32), SOFTCAP)
    x = tl.where(v0 + cols < V, x, float("-inf"))
    m_new = tl.maximum(m_row, tl.max(x, 0))
    s_row = s_row * tl.exp(m_row - m_new) + tl.sum(tl.exp(x - m_new), 0)
    m_row = m_new
  lse = m_row + tl.log(s_row)
  target = tl.load(TARGETS + row)
  x_t, _ = _cap(tl.load(x_ptr + target).to(tl.float32), SOFTCAP)
  tl.store(LOSS + row, lse - x_t)
  if WRITE_GRAD:
    d_ptr = DLOGITS + row * V_PAD
    for v0 in range(0, V_PAD, BLOCK_V):
      mask = v0 + cols < V
      x, dcap = _cap(tl.load(x_ptr + v0 + cols, mask=mask, other=0.0).to(tl.float32), SOFTCAP)
      d = tl.where(mask, (tl.exp(x - lse) - tl.where(v0 + cols == target, 1.0, 0.0)) * dcap, 0.0)
      tl.store(d_ptr + v0 + cols, (d * SCALE).to(DLOGITS.dtype.element_ty), mask=v0 + cols < V_PAD)
