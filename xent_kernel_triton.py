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
                    SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr,
                    LANE_STATS: tl.constexpr = False):
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
  # The running max and sum are per row, not per lane: one exp per logit in this sweep (a per-lane
  # running max costs two, and the exp unit, not DRAM, then bounds the kernel: 3 exps per logit
  # over 328M logits is ~0.24 ms on an H100/H200). Every block holds at least one real logit, so
  # m_row is finite after the first and exp(m_row - m_new) never sees -inf - -inf.
  if LANE_STATS:
    # Per-lane max, then per-lane sums of exp(x - the row max) in a second sweep (from L2): still one
    # exp per logit, and two block-wide reductions per row instead of two per block.
    m_lane = tl.full([BLOCK_V], -float("inf"), tl.float32)
    for v0 in range(0, V, BLOCK_V):
      x, _ = _cap(tl.load(x_ptr + v0 + cols, mask=v0 + cols < V, other=0.0).to(tl.float32), SOFTCAP)
      m_lane = tl.maximum(m_lane, tl.where(v0 + cols < V, x, float("-inf")))
    m_row = tl.max(m_lane, 0)
    s_lane = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, V, BLOCK_V):
      x, _ = _cap(tl.load(x_ptr + v0 + cols, mask=v0 + cols < V, other=0.0).to(tl.float32), SOFTCAP)
      s_lane += tl.where(v0 + cols < V, tl.exp(x - m_row), 0.0)
    s_row = tl.sum(s_lane, 0)
  else:
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
    d_ptr = DLOGITS + row * V
    for v0 in range(0, V, BLOCK_V):
      mask = v0 + cols < V
      x, dcap = _cap(tl.load(x_ptr + v0 + cols, mask=mask, other=0.0).to(tl.float32), SOFTCAP)
      d = (tl.exp(x - lse) - tl.where(v0 + cols == target, 1.0, 0.0)) * dcap
      tl.store(d_ptr + v0 + cols, (d * SCALE).to(DLOGITS.dtype.element_ty), mask=mask)


@triton.jit
def xent_tile_kernel(LOGITS, TARGETS, LOSS, DLOGITS, N: tl.constexpr, V: tl.constexpr, SCALE: tl.constexpr,
                     SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr, ROWS: tl.constexpr, WRITE_GRAD: tl.constexpr):
  """xent_fwd_kernel over ROWS rows at once: tiles of ROWS x BLOCK_V, so each program keeps ROWS
  times the loads in flight (rows past N are masked; they compute a finite, unused lse)."""
  rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
  rmask = rows < N
  x_ptr = LOGITS + rows[:, None] * V
  cols = tl.arange(0, BLOCK_V)[None, :]
  m_row = tl.full([ROWS], -float("inf"), tl.float32)
  s_row = tl.zeros([ROWS], tl.float32)
  x_next = tl.load(x_ptr + cols, mask=rmask[:, None] & (cols < V), other=0.0)
  for v0 in range(0, V, BLOCK_V):
    x_raw = x_next
    x_next = tl.load(x_ptr + v0 + BLOCK_V + cols, mask=rmask[:, None] & (v0 + BLOCK_V + cols < V), other=0.0)
    x, _ = _cap(x_raw.to(tl.float32), SOFTCAP)
    x = tl.where(v0 + cols < V, x, float("-inf"))
    m_new = tl.maximum(m_row, tl.max(x, 1))
    s_row = s_row * tl.exp(m_row - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
    m_row = m_new
  lse = m_row + tl.log(s_row)
  target = tl.load(TARGETS + rows, mask=rmask, other=0)
  x_t, _ = _cap(tl.load(LOGITS + rows * V + target, mask=rmask, other=0.0).to(tl.float32), SOFTCAP)
  tl.store(LOSS + rows, lse - x_t, mask=rmask)
  if WRITE_GRAD:
    d_ptr = DLOGITS + rows[:, None] * V
    for v0 in range(0, V, BLOCK_V):
      mask = rmask[:, None] & (v0 + cols < V)
      x, dcap = _cap(tl.load(x_ptr + v0 + cols, mask=mask, other=0.0).to(tl.float32), SOFTCAP)
      d = (tl.exp(x - lse[:, None]) - tl.where(v0 + cols == target[:, None], 1.0, 0.0)) * dcap
      tl.store(d_ptr + v0 + cols, (d * SCALE).to(DLOGITS.dtype.element_ty), mask=mask)
