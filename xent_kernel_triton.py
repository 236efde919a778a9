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
def xent_fwd_kernel(LOGITS, TARGETS, LOSS, DLOGITS, V: tl.constexpr, SCALE: tl.constexpr,
                    SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
  """One row: LOSS = logsumexp(x) - x[target]; DLOGITS = (softmax(x) - onehot(target)) * SCALE.

  x = the logits, soft-capped first when SOFTCAP > 0 (then DLOGITS is with respect to the raw
  logits: the tanh derivative is applied).

  The row (V logits in the compute dtype) is read twice: the second read, for the gradient, hits
  L2 (a 10k-vocab bf16 row is 20 KB), so DRAM sees one read of the logits and one write of the
  gradient, against XLA's max, sum-exp, gather and gradient passes.
  """
  row = tl.program_id(0).to(tl.int64)
  x_ptr = LOGITS + row * V
  cols = tl.arange(0, BLOCK_V)
  m = tl.full([BLOCK_V], float("-inf"), tl.float32)   # per-lane running max and sum of exp
  s = tl.zeros([BLOCK_V], tl.float32)
  for v0 in range(0, V, BLOCK_V):
    x, _ = _cap(tl.load(x_ptr + v0 + cols, mask=v0 + cols < V, other=0.0).to(tl.float32), SOFTCAP)
    x = tl.where(v0 + cols < V, x, float("-inf"))
    m_new = tl.maximum(m, x)
    # Lanes still at -inf (padding of the last block) would give exp(-inf - -inf) = NaN.
    s = s * tl.exp(tl.where(m_new == float("-inf"), 0.0, m - m_new)) + \
        tl.exp(tl.where(m_new == float("-inf"), float("-inf"), x - m_new))
    m = m_new
  m_row = tl.max(m, 0)
  lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), 0))
  target = tl.load(TARGETS + row)
  x_t, _ = _cap(tl.load(x_ptr + target).to(tl.float32), SOFTCAP)
  tl.store(LOSS + row, lse - x_t)
  if WRITE_GRAD:
    d_ptr = DLOGITS + row * V
    for v0 in range(0, V, BLOCK_V):
      mask = v0 + cols < V
      x, dcap = _cap(tl.load(x_ptr + v0 + cols, mask=mask, other=0.0).to(tl.float32), SOFTCAP)
      d = (tl.exp(x - lse) - tl.where(v0 + cols == target, 1.0, 0.0)) * dcap
      tl.store(d_ptr + v0 + cols, (d * SCALE).to(DLOGITS.dtype.element_ty), mask=mask)
