"""The Triton kernels behind attention_kernel.py (FlashAttention-2 forward and backward).

This file imports triton at load, so only attention_kernel.py imports it, and only when a kernel
is launched. Every kernel works on the model's [B, T, H, K] layout directly: program (i, b*H + h)
handles one block of rows of head h in batch b, whose rows sit H*D elements apart; no transpose.
Shapes, the softmax scale and the block sizes are compile-time constants (jax-triton passes its
keyword arguments as tl.constexpr), so each (shape, config) compiles once and the strides fold.

Softmax runs in base 2: scores are scaled by sm_scale*log2(e) so exp2 replaces exp, and the saved
LSE is in that base (log2-sum-exp of the scaled scores); only these kernels read it.
"""
import triton
import triton.language as tl

@triton.jit
def _diag(ROWS: tl.constexpr, COLS: tl.constexpr):
  """row - column of a [ROWS, COLS] tile, for the forward's causal test: compared with one scalar
  offset, where `queries >= keys` built in the loop compiled to two 64-bit compares per element (the
  loop counter is widened for the pointer arithmetic, and the compares follow it): 73.7 vs 76.2 us
  at the speedrun shape on the H200. The backward kernels keep the plain test: there the tile's
  registers cost occupancy (the dQ kernel's 74 -> 88 registers, 85.2 vs 84.2 us)."""
  return tl.arange(0, ROWS)[:, None] - tl.arange(0, COLS)[None, :]


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, diag, start_m, lo, hi, qk_scale,
               T: tl.constexpr, ROW: tl.constexpr, V_ROW: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr):
  offs_n = tl.arange(0, BLOCK_N)
  for start_n in range(lo, hi, BLOCK_N):
    start_n = tl.multiple_of(start_n, BLOCK_N)
    cols = start_n + offs_n
    if MASKED and T % BLOCK_N != 0:  # the ragged last block
      k = tl.load(k_ptrs + start_n * ROW, mask=cols[:, None] < T, other=0.0)
    else:
      k = tl.load(k_ptrs + start_n * ROW)
    # Raw scores: the max is taken before scaling (qk_scale > 0 commutes with it), so the scale
    # rides in the exponent's FMA instead of a multiply per score (issue-bound at head dim 32).
    qk = tl.dot(q, tl.trans(k))
    if MASKED:
      if CAUSAL:  # keys >= T are also > every real query, so the causal test covers them
        keep = diag >= start_n - start_m   # query >= key
      else:
        keep = cols[None, :] < T
      # -1e6, not -inf: a row whose first block is all masked gets exp2(~0) = 1 there, which its
      # first real key rescales by exp2(-1e6 qk_scale - m) = 0; -inf would give exp2(-inf + inf) =
      # NaN. (Not much lower either: the FMA's exponent carries the rounding of m, ~|m| 2^-24.)
      qk = tl.where(keep, qk, -1.0e6)
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if MASKED and T % BLOCK_N != 0:
      v = tl.load(v_ptrs + start_n * V_ROW, mask=cols[:, None] < T, other=0.0)
    else:
      v = tl.load(v_ptrs + start_n * V_ROW)
    acc = tl.dot(p.to(v.dtype), v, acc)
    m_i = m_new
  return acc, l_i, m_i


@triton.jit
def fwd_kernel(Q, K, V, O, LSE, SM_SCALE: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
               D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, V_ROW: tl.constexpr, V_OFF: tl.constexpr):
  """O = softmax(Q K^T * SM_SCALE) V for one block of BLOCK_M queries; LSE[b, h, t] saved.

  V's rows sit V_ROW elements apart from offset V_OFF: H*D and 0 for a [B, T, H, D] array, 3*H*D
  and 2*H*D to read V in place from the packed [B, T, 3, H, D] projection.
  """
  start_m, bh, base, offs_m = _fwd_program(T, H, D, BLOCK_M)
  ROW: tl.constexpr = H * D
  q = tl.load(Q + base + offs_m[:, None] * ROW + tl.arange(0, D)[None, :], mask=offs_m[:, None] < T, other=0.0)
  _fwd_block(q, K, V, O, LSE, start_m, bh, base, offs_m, SM_SCALE, T, H, D, BLOCK_M, BLOCK_N, CAUSAL, V_ROW, V_OFF)


@triton.jit
def _fwd_program(T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr):
  """(start_m, bh, base, offs_m) of this forward program: its first query, its b*H + h, the offset of
  its head's first element in a [B, T, H, D] array, and its query positions."""
  # Causal query blocks near the end do the most work: launch them first for load balance.
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
  bh = tl.program_id(1)
  base = (bh // H).to(tl.int64) * T * (H * D) + (bh % H) * D
  return start_m, bh, base, start_m + tl.arange(0, BLOCK_M)


@triton.jit
def _fwd_block(q, K, V, O, LSE, start_m, bh, base, offs_m, SM_SCALE: tl.constexpr, T: tl.constexpr,
               H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, V_ROW: tl.constexpr, V_OFF: tl.constexpr):
  """fwd_kernel's work once its query tile q [BLOCK_M, D] is in registers: O and LSE stored."""
  ROW: tl.constexpr = H * D
  offs_n = tl.arange(0, BLOCK_N)
  offs_d = tl.arange(0, D)
  k_ptrs = K + base + offs_n[:, None] * ROW + offs_d[None, :]
  v_ptrs = V + (bh // H).to(tl.int64) * T * V_ROW + V_OFF + (bh % H) * D + offs_n[:, None] * V_ROW + offs_d[None, :]
  m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
  l_i = tl.zeros([BLOCK_M], tl.float32)
  acc = tl.zeros([BLOCK_M, D], tl.float32)
  qk_scale = SM_SCALE * 1.4426950408889634
  # Keys in [0, full_hi) need no mask: below the diagonal block (causal) or inside T.
  # BLOCK_M % BLOCK_N == 0, so start_m is a multiple of BLOCK_N. Blocks above the diagonal
  # are never visited.
  if CAUSAL:
    full_hi = start_m
    hi = tl.minimum(start_m + BLOCK_M, T)
  else:
    full_hi = (T // BLOCK_N) * BLOCK_N
    hi = T
  diag = _diag(BLOCK_M, BLOCK_N)
  acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, diag, start_m, 0, full_hi, qk_scale,
                             T, ROW, V_ROW, BLOCK_N, False, CAUSAL)
  acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, diag, start_m, full_hi, hi, qk_scale,
                             T, ROW, V_ROW, BLOCK_N, True, CAUSAL)
  acc = acc / l_i[:, None]
  tl.store(LSE + bh * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)
  tl.store(O + base + offs_m[:, None] * ROW + offs_d[None, :], acc.to(O.dtype.element_ty),
           mask=offs_m[:, None] < T)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, offs_n, lo, hi, qk_scale,
                T: tl.constexpr, ROW: tl.constexpr, BLOCK_M: tl.constexpr,
                MASKED: tl.constexpr):
  # Query rows >= T load as zeros with lse = delta = 0, so P^T = 1 there but dO = 0 and
  # dS^T = 1 * (0 - 0) = 0: they add nothing to dK or dV.
  for start_m in range(lo, hi, BLOCK_M):
    start_m = tl.multiple_of(start_m, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rows = offs_m < T
    if T % BLOCK_M == 0:
      q = tl.load(q_ptrs + start_m * ROW)
      lse = tl.load(lse_ptr + offs_m)
    else:
      q = tl.load(q_ptrs + start_m * ROW, mask=rows[:, None], other=0.0)
      lse = tl.load(lse_ptr + offs_m, mask=rows, other=0.0)
    p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
    if MASKED:
      p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
    if T % BLOCK_M == 0:
      do = tl.load(do_ptrs + start_m * ROW)
    else:
      do = tl.load(do_ptrs + start_m * ROW, mask=rows[:, None], other=0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv)
    if T % BLOCK_M == 0:
      delta = tl.load(delta_ptr + offs_m)
    else:
      delta = tl.load(delta_ptr + offs_m, mask=rows, other=0.0)
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk)
  return dk, dv


@triton.jit
def _dkdv_block(Q, k, v, DO, LSE, DELTA, base, bh, start_n, SM_SCALE: tl.constexpr, T: tl.constexpr,
                ROW: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr):
  """(dK * SM_SCALE, dV) for the BLOCK_N keys at start_n whose tiles k, v are loaded, looping over the
  query blocks that see them; Q, dO rows sit ROW apart from base, LSE/DELTA rows are [b*H + h, t]."""
  offs_n = start_n + tl.arange(0, BLOCK_N)
  offs_m = tl.arange(0, BLOCK_M)
  offs_d = tl.arange(0, D)
  q_ptrs = Q + base + offs_m[:, None] * ROW + offs_d[None, :]
  do_ptrs = DO + base + offs_m[:, None] * ROW + offs_d[None, :]
  lse_ptr = LSE + bh * T
  delta_ptr = DELTA + bh * T
  dk = tl.zeros([BLOCK_N, D], tl.float32)
  dv = tl.zeros([BLOCK_N, D], tl.float32)
  qk_scale = SM_SCALE * 1.4426950408889634
  lo = 0
  if CAUSAL:  # queries before start_n never see these keys; the diagonal block is masked
    lo = start_n + BLOCK_N  # BLOCK_N % BLOCK_M == 0, so start_n is a multiple of BLOCK_M
    dk, dv = _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, offs_n, start_n,
                         tl.minimum(lo, T), qk_scale, T, ROW, BLOCK_M, True)
  dk, dv = _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, offs_n, lo, T,
                       qk_scale, T, ROW, BLOCK_M, False)
  return dk * SM_SCALE, dv


@triton.jit
def bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, SM_SCALE: tl.constexpr, T: tl.constexpr,
                    H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """dK, dV for one block of BLOCK_N keys, looping over the query blocks that see them."""
  start_n = tl.program_id(0) * BLOCK_N
  bh = tl.program_id(1)
  ROW: tl.constexpr = H * D
  base = (bh // H).to(tl.int64) * T * ROW + (bh % H) * D
  offs_n = start_n + tl.arange(0, BLOCK_N)
  kv = base + offs_n[:, None] * ROW + tl.arange(0, D)[None, :]
  rows = offs_n[:, None] < T
  k = tl.load(K + kv, mask=rows, other=0.0)
  v = tl.load(V + kv, mask=rows, other=0.0)
  dk, dv = _dkdv_block(Q, k, v, DO, LSE, DELTA, base, bh, start_n, SM_SCALE, T, ROW, D, BLOCK_M, BLOCK_N,
                       CAUSAL)
  tl.store(DK + kv, dk.to(DK.dtype.element_ty), mask=rows)
  tl.store(DV + kv, dv.to(DV.dtype.element_ty), mask=rows)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, offs_m, lo, hi, qk_scale,
              T: tl.constexpr, ROW: tl.constexpr, V_ROW: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr):
  offs_n = tl.arange(0, BLOCK_N)
  for start_n in range(lo, hi, BLOCK_N):
    start_n = tl.multiple_of(start_n, BLOCK_N)
    cols = start_n + offs_n
    if MASKED and T % BLOCK_N != 0:
      k = tl.load(k_ptrs + start_n * ROW, mask=cols[:, None] < T, other=0.0)
      v = tl.load(v_ptrs + start_n * V_ROW, mask=cols[:, None] < T, other=0.0)
    else:
      k = tl.load(k_ptrs + start_n * ROW)
      v = tl.load(v_ptrs + start_n * V_ROW)
    p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
    if MASKED:  # where(), not a multiply: p may be inf on a masked entry
      if CAUSAL:
        keep = offs_m[:, None] >= cols[None, :]
      else:
        keep = cols[None, :] < T
      p = tl.where(keep, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq)
  return dq


@triton.jit
def _dq_block(Q, K, v_head, O, DO, LSE, DELTA, base, bh, start_m, SM_SCALE: tl.constexpr, T: tl.constexpr,
              ROW: tl.constexpr, V_ROW: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """dQ * SM_SCALE for the BLOCK_M queries at start_m, looping over the key blocks they see; Q, K, O,
  dO rows sit ROW apart from base, V's rows V_ROW apart from v_head (this head's first row).

  It also makes these rows' delta = rowsum(O * dO) and stores it in DELTA for the dK/dV kernel,
  which runs after it: the rows are loaded here anyway, so delta costs no pass of its own.
  """
  offs_m = start_m + tl.arange(0, BLOCK_M)
  offs_n = tl.arange(0, BLOCK_N)
  offs_d = tl.arange(0, D)
  qo = base + offs_m[:, None] * ROW + offs_d[None, :]
  rows = offs_m < T
  q = tl.load(Q + qo, mask=rows[:, None], other=0.0)
  do = tl.load(DO + qo, mask=rows[:, None], other=0.0)
  lse = tl.load(LSE + bh * T + offs_m, mask=rows, other=0.0)
  o = tl.load(O + qo, mask=rows[:, None], other=0.0)
  delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
  tl.store(DELTA + bh * T + offs_m, delta, mask=rows)
  k_ptrs = K + base + offs_n[:, None] * ROW + offs_d[None, :]
  v_ptrs = v_head + offs_n[:, None] * V_ROW + offs_d[None, :]
  dq = tl.zeros([BLOCK_M, D], tl.float32)
  qk_scale = SM_SCALE * 1.4426950408889634
  if CAUSAL:  # BLOCK_M % BLOCK_N == 0, as in the forward
    full_hi = start_m
    hi = tl.minimum(start_m + BLOCK_M, T)
  else:
    full_hi = (T // BLOCK_N) * BLOCK_N
    hi = T
  dq = _dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, offs_m, 0, full_hi, qk_scale,
                 T, ROW, V_ROW, BLOCK_N, False, CAUSAL)
  dq = _dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, offs_m, full_hi, hi, qk_scale,
                 T, ROW, V_ROW, BLOCK_N, True, CAUSAL)
  return dq * SM_SCALE


@triton.jit
def bwd_dq_kernel(Q, K, V, O, DO, LSE, DELTA, DQ, SM_SCALE: tl.constexpr, T: tl.constexpr,
                  H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """dQ and delta for one block of BLOCK_M queries, looping over the key blocks they see."""
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
  bh = tl.program_id(1)
  ROW: tl.constexpr = H * D
  base = (bh // H).to(tl.int64) * T * ROW + (bh % H) * D
  dq = _dq_block(Q, K, V + base, O, DO, LSE, DELTA, base, bh, start_m, SM_SCALE, T, ROW, ROW, D, BLOCK_M,
                 BLOCK_N, CAUSAL)
  offs_m = start_m + tl.arange(0, BLOCK_M)
  tl.store(DQ + base + offs_m[:, None] * ROW + tl.arange(0, D)[None, :], dq.to(DQ.dtype.element_ty),
           mask=offs_m[:, None] < T)


# ----------------------------------------------------------------------------- packed QKV + RoPE
# The backward of attention_kernel.flash_attention_rope: Q and K arrive rotated (the forward saved
# them), V is read in place from the packed [B, T, 3, H, D] projection, and dQ, dK are rotated back
# (RoPE's transpose) in registers before the store, straight into one packed dQKV array. XLA would
# otherwise copy V out, run RoPE's backward over dQ and dK, and concatenate the three gradients.


@triton.jit
def _unrotate(x, cos, sin, ROWS: tl.constexpr, D: tl.constexpr):
  """RoPE's transpose on a [ROWS, D] tile of adjacent pairs (x0, x1): (x0 c + x1 s, x1 c - x0 s)."""
  x0, x1 = tl.split(tl.reshape(x, [ROWS, D // 2, 2]))
  return tl.reshape(tl.join(x0 * cos + x1 * sin, x1 * cos - x0 * sin), [ROWS, D])


@triton.jit
def _rope_tile(COS, SIN, offs, T: tl.constexpr, D: tl.constexpr):
  """cos, sin [len(offs), D/2] fp32 for the positions offs (rows >= T load zeros)."""
  ptrs = offs[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :]
  return (tl.load(COS + ptrs, mask=offs[:, None] < T, other=0.0),
          tl.load(SIN + ptrs, mask=offs[:, None] < T, other=0.0))


@triton.jit
def _dkdv_rope_block(Q, K, QKV, DO, LSE, DELTA, COS, SIN, SM_SCALE: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """This program's dK (rotated back) and dV for the packed layout, its keys offs_n, their offsets kv3
  in the packed [B, T, 3, H, D] array (at part 0) and the in-range mask rows."""
  start_n = tl.program_id(0) * BLOCK_N
  bh = tl.program_id(1)
  ROW: tl.constexpr = H * D
  base = (bh // H).to(tl.int64) * T * ROW + (bh % H) * D
  base3 = (bh // H).to(tl.int64) * T * 3 * ROW + (bh % H) * D
  offs_n = start_n + tl.arange(0, BLOCK_N)
  offs_d = tl.arange(0, D)
  rows = offs_n[:, None] < T
  k = tl.load(K + base + offs_n[:, None] * ROW + offs_d[None, :], mask=rows, other=0.0)
  kv3 = base3 + offs_n[:, None] * (3 * ROW) + offs_d[None, :]
  v = tl.load(QKV + 2 * ROW + kv3, mask=rows, other=0.0)
  dk, dv = _dkdv_block(Q, k, v, DO, LSE, DELTA, base, bh, start_n, SM_SCALE, T, ROW, D, BLOCK_M, BLOCK_N,
                       CAUSAL)
  cos, sin = _rope_tile(COS, SIN, offs_n, T, D)
  return _unrotate(dk, cos, sin, BLOCK_N, D), dv, offs_n, kv3, rows


@triton.jit
def bwd_dkdv_rope_kernel(Q, K, QKV, DO, LSE, DELTA, COS, SIN, DQKV_IN, DQKV, SM_SCALE: tl.constexpr,
                         T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """bwd_dkdv_kernel for the packed layout: writes dK (rotated back) and dV into DQKV[:, :, 1:3].

  DQKV_IN is the dQ kernel's output, aliased to DQKV (the same buffer), so the three gradients
  end up in one array without a copy.
  """
  dk, dv, _, kv3, rows = _dkdv_rope_block(Q, K, QKV, DO, LSE, DELTA, COS, SIN, SM_SCALE, T, H, D, BLOCK_M, BLOCK_N,
                                          CAUSAL)
  ROW: tl.constexpr = H * D
  tl.store(DQKV + ROW + kv3, dk.to(DQKV.dtype.element_ty), mask=rows)
  tl.store(DQKV + 2 * ROW + kv3, dv.to(DQKV.dtype.element_ty), mask=rows)


@triton.jit
def bwd_dq_rope_kernel(Q, K, QKV, O, DO, LSE, COS, SIN, DELTA, DQKV, SM_SCALE: tl.constexpr,
                       T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """bwd_dq_kernel for the packed layout: writes dQ (rotated back) into DQKV[:, :, 0], and delta.
  The dK/dV kernel fills DQKV[:, :, 1:3] after it. Its body is _dq_rope_block's, written out: through
  the helper ptxas allocates its registers differently (same instruction count), and this kernel's
  SASS is what the step was timed with."""
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
  bh = tl.program_id(1)
  ROW: tl.constexpr = H * D
  base = (bh // H).to(tl.int64) * T * ROW + (bh % H) * D
  base3 = (bh // H).to(tl.int64) * T * 3 * ROW + (bh % H) * D
  dq = _dq_block(Q, K, QKV + base3 + 2 * ROW, O, DO, LSE, DELTA, base, bh, start_m, SM_SCALE, T, ROW, 3 * ROW, D,
                 BLOCK_M, BLOCK_N, CAUSAL)
  offs_m = start_m + tl.arange(0, BLOCK_M)
  cos, sin = _rope_tile(COS, SIN, offs_m, T, D)
  tl.store(DQKV + base3 + offs_m[:, None] * (3 * ROW) + tl.arange(0, D)[None, :],
           _unrotate(dq, cos, sin, BLOCK_M, D).to(DQKV.dtype.element_ty), mask=offs_m[:, None] < T)


# x Wqkv's backward in FP8 (attention_kernel.flash_attention_qkv_fp8): the two kernels above with
# e5m2 stores of dQKV times G[0] (one scale for the tensor), each tile stored twice, packed and
# token-last. The bf16 kernels stay as they are (their SASS is what the step was timed with).
E5M2_MAX = tl.constexpr(57344.0)   # the largest finite e5m2 value: the stores clip to it, not to inf


@triton.jit
def _store_dqkv8(DQKV, DQKV_T, g, x, b, hh, part, offs, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr):
  """Stores e5m2(x * g), clipped, for x [len(offs), D] fp32 the gradient of part (0 q, 1 k, 2 v) of
  head hh at the tokens offs of batch b: into the packed DQKV [B, T, 3, H, D], and the same bytes
  token-last into DQKV_T [3 H D, B T] (x Wqkv's weight gradient sums over tokens, and cuBLASLt's
  FP8 dots want the summed axis contiguous); each of the tile's D rows there is a contiguous run of
  len(offs) bytes."""
  ROW: tl.constexpr = H * D
  offs_d = tl.arange(0, D)
  rows = offs < T
  x8 = tl.clamp(x * g, -E5M2_MAX, E5M2_MAX).to(tl.float8e5)
  packed = b.to(tl.int64) * T * 3 * ROW + part * ROW + hh * D + offs[:, None] * (3 * ROW) + offs_d[None, :]
  tl.store(DQKV + packed, x8, mask=rows[:, None])
  cols = (part * ROW + hh * D + offs_d).to(tl.int64) * (tl.num_programs(1) // H * T)   # B T tokens a row
  tl.store(DQKV_T + cols[:, None] + b * T + offs[None, :], tl.trans(x8), mask=rows[None, :])


@triton.jit
def bwd_dkdv_rope_fp8_kernel(Q, K, QKV, DO, LSE, DELTA, COS, SIN, G, DQKV_IN, DQKV_T_IN, DQKV, DQKV_T,
                             SM_SCALE: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """bwd_dkdv_rope_kernel storing e5m2(dK, dV times G[0]) into both of the dQ kernel's e5m2 arrays,
  aliased in place as there: DQKV [B, T, 3, H, D] and its token-last copy DQKV_T [3 H D, B T]."""
  dk, dv, offs_n, _, _ = _dkdv_rope_block(Q, K, QKV, DO, LSE, DELTA, COS, SIN, SM_SCALE, T, H, D, BLOCK_M, BLOCK_N,
                                          CAUSAL)
  bh = tl.program_id(1)
  g = tl.load(G)
  _store_dqkv8(DQKV, DQKV_T, g, dk, bh // H, bh % H, 1, offs_n, T, H, D)
  _store_dqkv8(DQKV, DQKV_T, g, dv, bh // H, bh % H, 2, offs_n, T, H, D)


@triton.jit
def _dq_rope_block(Q, K, QKV, O, DO, LSE, DELTA, COS, SIN, SM_SCALE: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """This program's dQ (rotated back) for the packed layout (and delta, stored), its queries offs_m and
  the offset base3 of its head's row 0 in the packed [B, T, 3, H, D] array."""
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
  bh = tl.program_id(1)
  ROW: tl.constexpr = H * D
  base = (bh // H).to(tl.int64) * T * ROW + (bh % H) * D
  base3 = (bh // H).to(tl.int64) * T * 3 * ROW + (bh % H) * D
  dq = _dq_block(Q, K, QKV + base3 + 2 * ROW, O, DO, LSE, DELTA, base, bh, start_m, SM_SCALE, T, ROW, 3 * ROW, D,
                 BLOCK_M, BLOCK_N, CAUSAL)
  offs_m = start_m + tl.arange(0, BLOCK_M)
  cos, sin = _rope_tile(COS, SIN, offs_m, T, D)
  return _unrotate(dq, cos, sin, BLOCK_M, D), offs_m, base3


@triton.jit
def bwd_dq_rope_fp8_kernel(Q, K, QKV, O, DO, LSE, COS, SIN, G, DELTA, DQKV, DQKV_T, SM_SCALE: tl.constexpr,
                           T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
  """bwd_dq_rope_kernel storing e5m2(dQ times G[0]) into DQKV [B, T, 3, H, D] and DQKV_T [3 H D, B T]
  (and delta, as there)."""
  dq, offs_m, _ = _dq_rope_block(Q, K, QKV, O, DO, LSE, DELTA, COS, SIN, SM_SCALE, T, H, D, BLOCK_M, BLOCK_N, CAUSAL)
  bh = tl.program_id(1)
  _store_dqkv8(DQKV, DQKV_T, tl.load(G), dq, bh // H, bh % H, 0, offs_m, T, H, D)


@triton.jit
def _rotate(x, cos, sin, ROWS: tl.constexpr, COLS: tl.constexpr):
  """RoPE on a [ROWS, COLS] tile of adjacent pairs: (x0 c - x1 s, x0 s + x1 c) in fp32, cos and sin
  [ROWS, COLS / 2]. The one expression of the rotation, so every kernel that rotates rounds alike."""
  x0, x1 = tl.split(tl.reshape(x.to(tl.float32), [ROWS, COLS // 2, 2]))
  return tl.reshape(tl.join(x0 * cos - x1 * sin, x0 * sin + x1 * cos), [ROWS, COLS])


@triton.jit
def _rope_rows(SRC, DST, src_offs, dst_offs, mask, cos, sin, ROWS: tl.constexpr, BLOCK: tl.constexpr):
  """DST = RoPE(SRC) on a [ROWS, BLOCK] tile of adjacent pairs, in fp32, rounded once."""
  out = _rotate(tl.load(SRC + src_offs, mask=mask, other=0.0), cos, sin, ROWS, BLOCK)
  tl.store(DST + dst_offs, out.to(DST.dtype.element_ty), mask=mask)


@triton.jit
def rope_qk_kernel(QKV, COS, SIN, Q, K, N: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK: tl.constexpr):
  """Q, K = RoPE(QKV[:, :, 0]), RoPE(QKV[:, :, 1]) for ROWS of the N = B*T tokens of the packed
  [B, T, 3, H, D] projection, as model.apply_rope (adjacent pairs, fp32 math, rounded once).

  flash_attention_rope's forward: one pass that reads q and k and writes both rotated, where XLA
  ran a concatenate fusion for each. A row's H*D features are one tile (BLOCK, a power of two);
  pairs never straddle a head, so pair j of the row takes the angle of pair j % (D/2) of its head.
  """
  src, dst, mask, cos, sin = _rope_row_tile(COS, SIN, N, T, H, D, ROWS, BLOCK)
  _rope_rows(QKV, Q, src, dst, mask, cos, sin, ROWS, BLOCK)
  _rope_rows(QKV + H * D, K, src, dst, mask, cos, sin, ROWS, BLOCK)


@triton.jit
def _rope_row_tile(COS, SIN, N: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK: tl.constexpr):
  """(source offsets in the packed [N, 3, H*D] rows, destination offsets in [N, H*D], mask, cos, sin)
  of this program's ROWS tokens."""
  ROW: tl.constexpr = H * D
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  cols = tl.arange(0, BLOCK)
  mask = (rows[:, None] < N) & (cols[None, :] < ROW)
  pairs = tl.arange(0, BLOCK // 2)
  table = (rows % T)[:, None] * (D // 2) + (pairs % (D // 2))[None, :]
  pair_mask = (rows[:, None] < N) & (pairs[None, :] < ROW // 2)
  cos = tl.load(COS + table, mask=pair_mask, other=0.0)
  sin = tl.load(SIN + table, mask=pair_mask, other=0.0)
  src = rows[:, None].to(tl.int64) * (3 * ROW) + cols[None, :]
  dst = rows[:, None].to(tl.int64) * ROW + cols[None, :]
  return src, dst, mask, cos, sin
