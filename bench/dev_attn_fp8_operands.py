"""Dev (GPU; CPU modes below): the attention's q, k and v stored in e4m3, one power-of-two scale per
(token, head) row, against the tree's bf16 operands at the speedrun shape.

Why. The attention kernels are ~2x above their copy-bandwidth floor and no schedule tried beat the
tree (docs/model.md, forty-sixth and forty-seventh sessions); fewer bytes is what is left. Here the
RoPE kernel reads the packed bf16 projection once and writes rotated q and k, and v, in e4m3 (16.8
MB each instead of 33.5 in bf16) with a scale per row of D values (a [B, H, T] fp32 array per part,
2.1 MB), the smallest power of two >= max|row| / 448. Every attention kernel then reads those:
  - the forward reads q, k, v in e4m3 (the tree: q, k and the projection's v in bf16);
  - the FP8 backward's dQ and dK/dV kernels the same (O, dO, LSE, delta as the tree).
Each tile is dequantized as it is loaded, exactly (x8 * 2^e fits bf16), and from there the kernels
are the tree's: the same dots on the same bf16 values. So the kernels equal the tree's kernels run
on the dequantized tensors (checked below, and in the interpreter), and what changes the loss is
only the rounding, which bench/dev_attn_fp8_sim.py's ATTN_FP8_SIM=row measures.

Bytes a layer at B128 T256 H16 D32, reads + writes: RoPE 67 + 67 -> 100 + 57 MB; forward 100 + 36
-> 57 + 36; dQ and dK/dV each read 100 -> 57 MB of operands. ~110 MB a layer less, ~38 us at the
copy rate, ~0.15 ms a step at most.

  python bench/dev_attn_fp8_operands.py --compile_only         # CPU: registers, shared, SASS sizes
  TRITON_INTERPRET=1 python bench/dev_attn_fp8_operands.py --interpret   # CPU with torch: the values
  python bench/dev_attn_fp8_operands.py --rounds=3 --out=F     # GPU: check against the tree, time

Nothing here is in the product. install_step() puts the kernels into the training step for
bench/dev_step_variants.sh (variant `fp8ops`).
"""
import os
import sys

import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import attention_kernel_triton as tk  # pylint: disable=wrong-import-position
import dev_tma_attention as tma  # pylint: disable=wrong-import-position

E4M3_MAX = tl.constexpr(448.0)


# ----------------------------------------------------------------------------- RoPE + e4m3 rows


@triton.jit
def _rows8(x, X8, SX, dst, mask, rows, N: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
           ROWS: tl.constexpr, BLOCK: tl.constexpr):
  """Stores x [ROWS, BLOCK] fp32 (ROWS tokens, H heads of D) as e4m3 at dst with one power-of-two
  scale per (token, head), the smallest 2^e >= max|row| / 448, and the scales into SX [B, H, T]."""
  x3 = tl.reshape(x, [ROWS, BLOCK // D, D])
  amax = tl.maximum(tl.max(tl.abs(x3), 2), 1e-30)
  bits = tl.math.div_rn(amax, E4M3_MAX).to(tl.int32, bitcast=True)
  s = ((bits + 0x7FFFFF) & 0x7F800000).to(tl.float32, bitcast=True)
  x8 = tl.reshape(x3 * (1.0 / s)[:, :, None], [ROWS, BLOCK]).to(tl.float8e4nv)
  tl.store(X8 + dst, x8, mask=mask)
  heads = tl.arange(0, BLOCK // D)
  where = (rows // T)[:, None] * (H * T) + heads[None, :] * T + (rows % T)[:, None]
  tl.store(SX + where, s, mask=(rows[:, None] < N) & (heads[None, :] < H))


@triton.jit
def rope_qkv8_kernel(QKV, COS, SIN, Q8, K8, V8, SQ, SK, SV, N: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
                     D: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
  """rope_qk_kernel writing e4m3: Q8, K8 = e4m3 rows of RoPE(q), RoPE(k) and V8 of v, [B, T, H, D]
  each, and their scales SQ, SK, SV [B, H, T] (x = x8 * s)."""
  src, dst, mask, cos, sin = tk._rope_row_tile(COS, SIN, N, T, H, D, ROWS, BLOCK)  # pylint: disable=protected-access
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  ROW: tl.constexpr = H * D
  for part in tl.static_range(3):
    x = tl.load(QKV + part * ROW + src, mask=mask, other=0.0).to(tl.float32)
    if part < 2:
      x = tk._rotate(x, cos, sin, ROWS, BLOCK)  # pylint: disable=protected-access
    if part == 0:
      _rows8(x, Q8, SQ, dst, mask, rows, N, T, H, D, ROWS, BLOCK)
    elif part == 1:
      _rows8(x, K8, SK, dst, mask, rows, N, T, H, D, ROWS, BLOCK)
    else:
      _rows8(x, V8, SV, dst, mask, rows, N, T, H, D, ROWS, BLOCK)


# ----------------------------------------------------------------------------- the attention on e4m3 rows


@triton.jit
def _load8(ptrs, s_ptrs, rows, MASKED: tl.constexpr, DT: tl.constexpr):
  """An e4m3 tile [R, D] and its row scales, dequantized to DT (bf16; exact: 2^e times e4m3)."""
  if MASKED:
    x8 = tl.load(ptrs, mask=rows[:, None], other=0.0)
    s = tl.load(s_ptrs, mask=rows, other=0.0)
  else:
    x8 = tl.load(ptrs)
    s = tl.load(s_ptrs)
  return x8.to(DT) * s.to(DT)[:, None]


@triton.jit
def _fwd8_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, sk_ptr, sv_ptr, diag, start_m, lo, hi, qk_scale,
                T: tl.constexpr, ROW: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DT: tl.constexpr,
                QK8: tl.constexpr):
  """attention_kernel_triton._fwd_inner (causal) with K and V tiles read as e4m3 rows. QK8: q is the
  raw e4m3 tile and qk_scale a row vector (times q's scales); K stays e4m3 for an FP8 dot, its
  scales applied to the scores' columns."""
  offs_n = tl.arange(0, BLOCK_N)
  for start_n in range(lo, hi, BLOCK_N):
    start_n = tl.multiple_of(start_n, BLOCK_N)
    cols = start_n + offs_n
    if QK8:
      if MASKED and T % BLOCK_N != 0:
        k8 = tl.load(k_ptrs + start_n * ROW, mask=cols[:, None] < T, other=0.0)
        sk = tl.load(sk_ptr + cols, mask=cols < T, other=0.0)
      else:
        k8 = tl.load(k_ptrs + start_n * ROW)
        sk = tl.load(sk_ptr + cols)
      qk = tl.dot(q, tl.trans(k8)) * sk[None, :]
    else:
      k = _load8(k_ptrs + start_n * ROW, sk_ptr + cols, cols < T, MASKED and T % BLOCK_N != 0, DT)
      qk = tl.dot(q, tl.trans(k))
    if MASKED:
      qk = tl.where(diag >= start_n - start_m, qk, -1.0e6)
    if QK8:
      m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
      p = tl.math.exp2(qk * qk_scale[:, None] - m_new[:, None])
    else:
      m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
      p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = _load8(v_ptrs + start_n * ROW, sv_ptr + cols, cols < T, MASKED and T % BLOCK_N != 0, DT)
    acc = tl.dot(p.to(v.dtype), v, acc)
    m_i = m_new
  return acc, l_i, m_i


@triton.jit
def fwd8_kernel(Q8, K8, V8, SQ, SK, SV, O, LSE, SM_SCALE: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK8: tl.constexpr):
  """fwd_kernel (causal) on e4m3 rows: O [B, T, H, D] bf16, LSE [B, H, T]. QK8: Q K^T as an FP8 dot
  (no dequantization of q and k; their scales on the scores)."""
  start_m, bh, base, offs_m = tk._fwd_program(T, H, D, BLOCK_M)  # pylint: disable=protected-access
  ROW: tl.constexpr = H * D
  offs_n = tl.arange(0, BLOCK_N)
  offs_d = tl.arange(0, D)
  DT: tl.constexpr = O.dtype.element_ty
  q_ptrs = Q8 + base + offs_m[:, None] * ROW + offs_d[None, :]
  qk_scale = SM_SCALE * 1.4426950408889634
  if QK8:
    q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)
    qk_scale = qk_scale * tl.load(SQ + bh * T + offs_m, mask=offs_m < T, other=0.0)
  else:
    q = _load8(q_ptrs, SQ + bh * T + offs_m, offs_m < T, True, DT)
  k_ptrs = K8 + base + offs_n[:, None] * ROW + offs_d[None, :]
  v_ptrs = V8 + base + offs_n[:, None] * ROW + offs_d[None, :]
  m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
  l_i = tl.zeros([BLOCK_M], tl.float32)
  acc = tl.zeros([BLOCK_M, D], tl.float32)
  hi = tl.minimum(start_m + BLOCK_M, T)
  diag = tk._diag(BLOCK_M, BLOCK_N)  # pylint: disable=protected-access
  acc, l_i, m_i = _fwd8_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, SK + bh * T, SV + bh * T, diag, start_m, 0,
                              start_m, qk_scale, T, ROW, BLOCK_N, False, DT, QK8)
  acc, l_i, m_i = _fwd8_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, SK + bh * T, SV + bh * T, diag, start_m, start_m,
                              hi, qk_scale, T, ROW, BLOCK_N, True, DT, QK8)
  acc = acc / l_i[:, None]
  tl.store(LSE + bh * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)
  tl.store(O + base + offs_m[:, None] * ROW + offs_d[None, :], acc.to(O.dtype.element_ty), mask=offs_m[:, None] < T)


@triton.jit
def _dq8_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, sk_ptr, sv_ptr, offs_m, lo, hi, qk_scale,
               T: tl.constexpr, ROW: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DT: tl.constexpr):
  """attention_kernel_triton._dq_inner (causal) with K and V tiles read as e4m3 rows."""
  offs_n = tl.arange(0, BLOCK_N)
  for start_n in range(lo, hi, BLOCK_N):
    start_n = tl.multiple_of(start_n, BLOCK_N)
    cols = start_n + offs_n
    k = _load8(k_ptrs + start_n * ROW, sk_ptr + cols, cols < T, MASKED and T % BLOCK_N != 0, DT)
    v = _load8(v_ptrs + start_n * ROW, sv_ptr + cols, cols < T, MASKED and T % BLOCK_N != 0, DT)
    p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
    if MASKED:
      p = tl.where(offs_m[:, None] >= cols[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq)
  return dq


@triton.jit
def _head_tile(start, BLOCK: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr):
  """(b*H + h, offset of the head's first element in a [B, T, H, D] array, this program's BLOCK
  positions from start, the offsets of their [BLOCK, D] tile, the in-range mask) for program axis 1."""
  bh = tl.program_id(1)
  base = (bh // H).to(tl.int64) * T * (H * D) + (bh % H) * D
  offs = start + tl.arange(0, BLOCK)
  return bh, base, offs, base + offs[:, None] * (H * D) + tl.arange(0, D)[None, :], offs < T


@triton.jit
def bwd_dq8_kernel(Q8, K8, V8, SQ, SK, SV, O, DO, LSE, COS, SIN, G, DELTA, DQKV, DQKV_T, SM_SCALE: tl.constexpr,
                   T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
  """bwd_dq_rope_fp8_kernel (causal) on e4m3 rows: e5m2(dQ G) rotated back into DQKV and DQKV_T, and
  delta = rowsum(O dO) for the dK/dV kernel."""
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
  bh, base, offs_m, qo, rows = _head_tile(start_m, BLOCK_M, T, H, D)
  ROW: tl.constexpr = H * D
  offs_n = tl.arange(0, BLOCK_N)
  offs_d = tl.arange(0, D)
  DT: tl.constexpr = DO.dtype.element_ty
  q = _load8(Q8 + qo, SQ + bh * T + offs_m, rows, True, DT)
  do = tl.load(DO + qo, mask=rows[:, None], other=0.0)
  lse = tl.load(LSE + bh * T + offs_m, mask=rows, other=0.0)
  o = tl.load(O + qo, mask=rows[:, None], other=0.0)
  delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
  tl.store(DELTA + bh * T + offs_m, delta, mask=rows)
  k_ptrs = K8 + base + offs_n[:, None] * ROW + offs_d[None, :]
  v_ptrs = V8 + base + offs_n[:, None] * ROW + offs_d[None, :]
  dq = tl.zeros([BLOCK_M, D], tl.float32)
  qk_scale = SM_SCALE * 1.4426950408889634
  hi = tl.minimum(start_m + BLOCK_M, T)
  dq = _dq8_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, SK + bh * T, SV + bh * T, offs_m, 0, start_m, qk_scale,
                  T, ROW, BLOCK_N, False, DT)
  dq = _dq8_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, SK + bh * T, SV + bh * T, offs_m, start_m, hi, qk_scale,
                  T, ROW, BLOCK_N, True, DT)
  cos, sin = tk._rope_tile(COS, SIN, offs_m, T, D)  # pylint: disable=protected-access
  tk._store_dqkv8(DQKV, DQKV_T, tl.load(G), tk._unrotate(dq * SM_SCALE, cos, sin, BLOCK_M, D),  # pylint: disable=protected-access
                  bh // H, bh % H, 0, offs_m, T, H, D)


@triton.jit
def _dkdv8_inner(dk, dv, k, v, q_ptrs, sq_ptr, do_ptrs, lse_ptr, delta_ptr, offs_n, lo, hi, qk_scale,
                 T: tl.constexpr, ROW: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr):
  """attention_kernel_triton._dkdv_inner with Q tiles read as e4m3 rows."""
  for start_m in range(lo, hi, BLOCK_M):
    start_m = tl.multiple_of(start_m, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rows = offs_m < T
    ragged = T % BLOCK_M != 0
    q = _load8(q_ptrs + start_m * ROW, sq_ptr + offs_m, rows, ragged, do_ptrs.dtype.element_ty)
    if ragged:
      lse = tl.load(lse_ptr + offs_m, mask=rows, other=0.0)
    else:
      lse = tl.load(lse_ptr + offs_m)
    p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
    if MASKED:
      p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
    if ragged:
      do = tl.load(do_ptrs + start_m * ROW, mask=rows[:, None], other=0.0)
      delta = tl.load(delta_ptr + offs_m, mask=rows, other=0.0)
    else:
      do = tl.load(do_ptrs + start_m * ROW)
      delta = tl.load(delta_ptr + offs_m)
    dv = tl.dot(p_t.to(do.dtype), do, dv)
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk)
  return dk, dv


@triton.jit
def bwd_dkdv8_kernel(Q8, K8, V8, SQ, SK, SV, DO, LSE, DELTA, COS, SIN, G, DQKV_IN, DQKV_T_IN, DQKV, DQKV_T,
                     SM_SCALE: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
  """bwd_dkdv_rope_fp8_kernel (causal) on e4m3 rows: e5m2(dK G) rotated back and e5m2(dV G) into the
  dQ kernel's two arrays, aliased in place."""
  start_n = tl.program_id(0) * BLOCK_N
  bh, base, offs_n, kv, rows = _head_tile(start_n, BLOCK_N, T, H, D)
  ROW: tl.constexpr = H * D
  offs_m = tl.arange(0, BLOCK_M)
  offs_d = tl.arange(0, D)
  DT: tl.constexpr = DO.dtype.element_ty
  k = _load8(K8 + kv, SK + bh * T + offs_n, rows, True, DT)
  v = _load8(V8 + kv, SV + bh * T + offs_n, rows, True, DT)
  q_ptrs = Q8 + base + offs_m[:, None] * ROW + offs_d[None, :]
  do_ptrs = DO + base + offs_m[:, None] * ROW + offs_d[None, :]
  dk = tl.zeros([BLOCK_N, D], tl.float32)
  dv = tl.zeros([BLOCK_N, D], tl.float32)
  qk_scale = SM_SCALE * 1.4426950408889634
  lo = start_n + BLOCK_N   # BLOCK_N % BLOCK_M == 0: the diagonal blocks, masked, then the rest
  dk, dv = _dkdv8_inner(dk, dv, k, v, q_ptrs, SQ + bh * T, do_ptrs, LSE + bh * T, DELTA + bh * T, offs_n, start_n,
                        tl.minimum(lo, T), qk_scale, T, ROW, BLOCK_M, True)
  dk, dv = _dkdv8_inner(dk, dv, k, v, q_ptrs, SQ + bh * T, do_ptrs, LSE + bh * T, DELTA + bh * T, offs_n, lo, T,
                        qk_scale, T, ROW, BLOCK_M, False)
  cos, sin = tk._rope_tile(COS, SIN, offs_n, T, D)  # pylint: disable=protected-access
  g = tl.load(G)
  tk._store_dqkv8(DQKV, DQKV_T, g, tk._unrotate(dk * SM_SCALE, cos, sin, BLOCK_N, D), bh // H, bh % H, 1, offs_n,  # pylint: disable=protected-access
                  T, H, D)
  tk._store_dqkv8(DQKV, DQKV_T, g, dv, bh // H, bh % H, 2, offs_n, T, H, D)  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- host side


def rope8(qkv_BT3HK, cos_TK, sin_TK):
  """(q8, k8, v8 [B, T, H, D] e4m3; sq, sk, sv [B, H, T] fp32) from the packed projection."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  jt, _ = attention_kernel._triton()  # pylint: disable=protected-access
  b, t, _, h, d = qkv_BT3HK.shape
  x8 = jax.ShapeDtypeStruct((b, t, h, d), jnp.float8_e4m3fn)
  s = jax.ShapeDtypeStruct((b, h, t), jnp.float32)
  rows = attention_kernel.ROPE_ROWS
  return jt.triton_call(qkv_BT3HK, cos_TK, sin_TK, kernel=rope_qkv8_kernel, out_shape=(x8, x8, x8, s, s, s),
                        grid=(-(-b * t // rows),), num_warps=attention_kernel.ROPE_WARPS, num_stages=1,
                        N=b * t, T=t, H=h, D=d, ROWS=rows, BLOCK=1 << max(0, h * d - 1).bit_length())


def forward8(ops, sm_scale, config, qk8=False):
  """(O, LSE) from rope8's six arrays (qk8: fwd8_kernel's QK8)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  jt, _ = attention_kernel._triton()  # pylint: disable=protected-access
  b, t, h, d = ops[0].shape
  bm, bn, warps, stages = config[0]
  return jt.triton_call(*ops, kernel=fwd8_kernel, out_shape=(jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16),
                                                            jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
                        grid=(-(-t // bm), b * h), num_warps=warps, num_stages=stages,
                        SM_SCALE=sm_scale, T=t, H=h, D=d, BLOCK_M=bm, BLOCK_N=bn, QK8=qk8)


QK8 = False   # the step's forward: fwd8_kernel's QK8 (install_step)
FWD_STAGES = None   # the step's forward: pipeline stages, None for the tree's (3: 96 registers, 5
                    # programs an SM; 2 or 4 stages: 83-84, 6 programs; compiled for sm_90 here)


def flash_rope_fwd8(qkv_BT3HK, cos_TK, sin_TK, causal, sm_scale, config):
  """attention_kernel._flash_rope_fwd on e4m3 rows: (O, residuals for dqkv8)."""
  assert causal
  ops = rope8(qkv_BT3HK, cos_TK, sin_TK)
  if FWD_STAGES:
    config = (config[0][:3] + (FWD_STAGES,),) + tuple(config[1:])
  o, lse = forward8(ops, sm_scale, config, QK8)
  return o, (ops, o, lse, cos_TK, sin_TK)   # cos, sin at 3:5, where _qkv_flash_fp8_bwd takes them


def dqkv8(res, do_BTHK, g, sm_scale, kernels=True):
  """attention_kernel._dqkv8 (kernels=True) on flash_rope_fwd8's residuals: e5m2(dQKV g) as [N, 3HK]
  and [3HK, N]."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  assert kernels
  jt, _ = attention_kernel._triton()  # pylint: disable=protected-access
  ops, o, lse, cos, sin = res
  b, t, h, d = ops[0].shape
  config = attention_kernel.block_config(t, d)
  consts = dict(SM_SCALE=sm_scale, T=t, H=h, D=d)
  do = do_BTHK.astype(jnp.bfloat16)
  out = (jax.ShapeDtypeStruct((b, t, 3, h, d), jnp.float8_e5m2), jax.ShapeDtypeStruct((3 * h * d, b * t), jnp.float8_e5m2))
  bm, bn, warps, stages = config[2]
  delta, d8, d8t = jt.triton_call(*ops, o, do, lse, cos, sin, g, kernel=bwd_dq8_kernel,
                                  out_shape=(jax.ShapeDtypeStruct((b, h, t), jnp.float32), *out),
                                  grid=(-(-t // bm), b * h), num_warps=warps, num_stages=stages, BLOCK_M=bm,
                                  BLOCK_N=bn, **consts)
  ins = (*ops, do, lse, delta, cos, sin, g, d8, d8t)
  bm, bn, warps, stages = config[1]
  d8, d8t = jt.triton_call(*ins, kernel=bwd_dkdv8_kernel, out_shape=out,
                           input_output_aliases={len(ins) - 2: 0, len(ins) - 1: 1}, grid=(-(-t // bn), b * h),
                           num_warps=warps, num_stages=stages, BLOCK_M=bm, BLOCK_N=bn, **consts)
  return d8.reshape(b * t, -1), d8t


def install_step(variant="fp8ops"):
  """The training step's FP8-dQKV attention (attention_kernel.flash_attention_qkv_fp8) on these kernels;
  variant 'fp8qk': the forward's Q K^T as an FP8 dot; 'fp8sN': the forward at N pipeline stages."""
  import attention_kernel  # pylint: disable=import-outside-toplevel
  global QK8, FWD_STAGES  # pylint: disable=global-statement
  QK8 = variant == "fp8qk"
  FWD_STAGES = int(variant[4:]) if variant.startswith("fp8s") else None
  attention_kernel._flash_rope_fwd = flash_rope_fwd8  # pylint: disable=protected-access
  attention_kernel._dqkv8 = dqkv8  # pylint: disable=protected-access


def dequantized(ops):
  """(q, k, v) bf16 [B, T, H, D] from rope8's arrays (x8 * s, exact)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  q8, k8, v8, sq, sk, sv = ops
  return tuple((x8.astype(jnp.float32) * jnp.swapaxes(s, 1, 2)[..., None]).astype(jnp.bfloat16)
               for x8, s in ((q8, sq), (k8, sk), (v8, sv)))


def reference_rope8(qkv_BT3HK, cos_TK, sin_TK):
  """rope8's arrays by XLA: the tree's rotation (attention_kernel._rotated's values, model.apply_rope),
  then bench/dev_attn_fp8_sim's per-row rounding (its pow2_ceil scale)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  import dev_attn_fp8_sim as sim  # pylint: disable=import-outside-toplevel
  parts = [model.apply_rope(qkv_BT3HK[:, :, i].astype(jnp.float32), cos_TK, sin_TK) for i in (0, 1)]
  parts.append(qkv_BT3HK[:, :, 2].astype(jnp.float32))
  x8s, ss = [], []
  for x in parts:
    s = sim.pow2_ceil(jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1e-30) / 448.0)
    x8s.append((x / s).astype(jnp.float8_e4m3fn))
    ss.append(jnp.swapaxes(s[..., 0], 1, 2))
  return (*x8s, *ss)


def main():
  args = tma.command_line(__doc__, "fp8ops", {
      "compile_only": ("CPU: compile for sm_90, print registers, shared, SASS sizes", compile_only),
      "interpret": ("TRITON_INTERPRET=1 with torch: the kernels' values", interpret)})
  if args is None:
    return
  import json  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  x = tma.speedrun_inputs()
  cfg, sm = x["cfg"], x["d"] ** -0.5
  result = {"device": jax.devices()[0].device_kind, "command": "python " + " ".join(sys.argv)}
  # 1. rope8 against XLA's rotation and rounding: every byte and scale (the same fp32 rotation, RNE).
  ops = jax.jit(rope8)(x["qkv"], x["cos"], x["sin"])
  ref = jax.jit(reference_rope8)(x["qkv"], x["cos"], x["sin"])
  same = [float(np.mean(np.asarray(a).view(np.uint8 if a.dtype.itemsize == 1 else np.uint32)
                        == np.asarray(b).view(np.uint8 if b.dtype.itemsize == 1 else np.uint32)))
          for a, b in zip(ops, ref)]
  result["rope8_equal_share"] = same
  print("rope8 equal share (q8 k8 v8 sq sk sv):", same, flush=True)
  # 2. the kernels on e4m3 rows against the tree's kernels on the dequantized tensors.
  q, k, v = jax.jit(dequantized)(ops)
  qkv_deq = jnp.stack([x["qkv"][:, :, 0], x["qkv"][:, :, 1], v], axis=2)   # v in place, as the tree reads it
  fwd_tree = lambda q, k, qkv: attention_kernel._forward(q, k, qkv, True, sm, cfg, packed_v=True)  # pylint: disable=protected-access
  res_tree = (qkv_deq, q, k, x["cos"], x["sin"], *jax.jit(fwd_tree)(q, k, qkv_deq))
  o8, lse8 = jax.jit(lambda *a: forward8(a, sm, cfg))(*ops)
  res8 = (ops, o8, lse8, x["cos"], x["sin"])
  # The rope step: the tree's rope_qk_kernel against rope8 (both from the packed projection).
  cases = {
      "rope": ((x["qkv"], x["cos"], x["sin"]), {
          "tree": attention_kernel._rotated,  # pylint: disable=protected-access
          "fp8ops": None}),
      "fwd": ((q, k, qkv_deq, ops), {
          "tree": lambda q, k, qkv, ops: fwd_tree(q, k, qkv),
          "fp8ops": lambda q, k, qkv, ops: forward8(ops, sm, cfg),
          "fp8qk": lambda q, k, qkv, ops: forward8(ops, sm, cfg, qk8=True),
          **{f"fp8s{n}": (lambda q, k, qkv, ops, n=n: forward8(ops, sm, ((64, 32, 4, n),) + cfg[1:])) for n in (1, 2, 4)}}),
      "bwd8": ((x["do"], x["g"]), {
          "tree": lambda do, g: attention_kernel._dqkv8(res_tree, do, g, sm, True),  # pylint: disable=protected-access
          "fp8ops": lambda do, g: dqkv8(res8, do, g, sm)}),
  }
  cases["rope"][1]["fp8ops"] = rope8

  def tolerance(part, name):  # pylint: disable=unused-argument
    return {"fwd": (1e-2, 0.99), "bwd8": (0.05, 0.99)}[part]

  check = cases.pop("rope")
  tma.check_and_time(cases, args.rounds, result, tolerance)
  rope_rows = []
  import dev_memory_kernels as dmk  # pylint: disable=import-outside-toplevel
  for r in range(args.rounds):
    for name, fn in check[1].items():
      ms, by = dmk.device_ms(fn, *check[0])
      rope_rows.append({"round": r, "variant": name, "us": ms * 1e3})
      print(f"round {r} rope {name:8s} {ms * 1e3:7.1f} us", flush=True)
  result["rope_rows"] = rope_rows
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=str)


def compile_only():
  """CPU: every kernel compiled for sm_90 at the speedrun shape (registers, spills, shared, SASS size)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import hopper_compile  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import dev_persistent_attention as dpa  # pylint: disable=import-outside-toplevel
  import dev_sass_mix  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  monkeypatch = pytest.MonkeyPatch()
  compiler = hopper_compile.patch(monkeypatch)
  monkeypatch.setattr(attention_kernel, "_triton", lambda: (compiler, tk))
  b, t, h, d = 128, 256, 16, 32
  qkv = jax.ShapeDtypeStruct((b, t, 3, h, d), jnp.bfloat16)
  cos, sin = model.rope_tables(t, d, 10_000.0)
  for fwd, bwd in ((attention_kernel._flash_rope_fwd, attention_kernel._dqkv8), (flash_rope_fwd8, dqkv8)):  # pylint: disable=protected-access
    def f(x, fwd=fwd, bwd=bwd):
      o, res = fwd(x, cos, sin, True, d ** -0.5, attention_kernel.block_config(t, d))
      return o, bwd(res, o, jnp.ones((1,), jnp.float32), d ** -0.5, True)
    jax.eval_shape(f, qkv)
  monkeypatch.undo()
  for key, k in compiler._cache.items():  # pylint: disable=protected-access
    code = dev_sass_mix.analyse(key[0].__name__, k.asm["cubin"])
    trips = ", ".join(str(loop["instructions"]) for loop in code["loops"])
    print(f"{key[0].__name__:28s} registers {dpa._registers(k.asm['cubin'])}, shared {k.metadata.shared}, "  # pylint: disable=protected-access
          f"{code['instructions']} instructions ({code['outside_loops']} outside loops; loops: {trips})")


def interpret():
  """The kernels in Triton's CPU interpreter (TRITON_INTERPRET=1, torch), in float16 where the tree's
  interpreter checks use it: rope8 against NumPy's rounding; the attention kernels on e4m3 rows
  against the tree's kernels on the dequantized tensors."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  x = tma.interpret_inputs()
  qkv, cos, sin, g, do = x["qkv"], x["cos"], x["sin"], x["g"], x["do"]
  b, t, _, h, d = qkv.shape
  n = b * t
  q8, k8, v8 = (torch.zeros((b, t, h, d), dtype=torch.float8_e4m3fn) for _ in range(3))
  sq, sk, sv = (torch.zeros((b, h, t)) for _ in range(3))
  rope_qkv8_kernel[(n // 4,)](qkv, cos, sin, q8, k8, v8, sq, sk, sv, N=n, T=t, H=h, D=d, ROWS=4,
                              BLOCK=1 << (h * d - 1).bit_length())
  # NumPy: rotate in float64 from the fp16 inputs (fp32 in the kernel: compare the scales exactly
  # and the codes within one step), round each row with ml_dtypes.
  a = qkv.float().numpy().astype(np.float64)
  c, s_ = cos.numpy().astype(np.float64), sin.numpy().astype(np.float64)

  def rot(z):
    z0, z1 = z[..., 0::2], z[..., 1::2]
    out = np.empty_like(z)
    out[..., 0::2] = z0 * c[None, :, None] - z1 * s_[None, :, None]
    out[..., 1::2] = z0 * s_[None, :, None] + z1 * c[None, :, None]
    return out
  worst = 0
  for got8, got_s, z in ((q8, sq, rot(a[:, :, 0])), (k8, sk, rot(a[:, :, 1])), (v8, sv, a[:, :, 2])):
    scale = 2.0 ** np.ceil(np.log2(np.abs(z).max(-1) / 448.0))   # [b, t, h]
    assert np.array_equal(got_s.numpy().transpose(0, 2, 1), scale), "scales"
    want = (z / scale[..., None]).astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    got = got8.float().numpy().astype(np.float64)
    step = np.abs(want) * 2.0 ** -3 + 2.0 ** -9
    worst = max(worst, float(np.max(np.abs(got - want) / step)))
    bad = np.abs(got - want) > step
    # Triton's interpreter drops the carry when a value rounds up to a power of two (and rounds
    # subnormals its own way: bench/dev_interpret_xent.py): those entries are bounded, not matched.
    r = np.abs(z / scale[..., None])
    carry = bad & (np.abs(want) > r) & (np.abs(got) * 2 == np.abs(want)) & (np.log2(np.abs(want)) % 1 == 0)
    sub = bad & (r < 2.0 ** -6) & (np.abs(got - want) <= 2.0 ** -8)
    assert not (bad & ~carry & ~sub).any(), np.argwhere(bad & ~carry & ~sub)[:3]
    print(f"  interpreter carry/subnormal entries: {int(carry.sum())} / {int(sub.sum())} of {bad.size}")
    print(f"rope8 part: {np.mean(got == want):.4f} of codes equal to NumPy's, the rest one step apart")
  # The kernels on e4m3 rows against the tree's on the dequantized values (float16 here).
  deq = [(x8.float() * s.transpose(1, 2)[..., None]).half() for x8, s in ((q8, sq), (k8, sk), (v8, sv))]
  qkv_deq = torch.stack([qkv[:, :, 0], qkv[:, :, 1], deq[2]], dim=2).contiguous()
  c8 = dict(SM_SCALE=d ** -0.5, T=t, H=h, D=d)
  o_t, lse_t = torch.empty((b, t, h, d), dtype=torch.float16), torch.empty((b, h, t))
  tk.fwd_kernel[(t // 64, b * h)](deq[0], deq[1], qkv_deq, o_t, lse_t, V_ROW=3 * h * d, V_OFF=2 * h * d,
                                  BLOCK_M=64, BLOCK_N=32, CAUSAL=True, **c8)
  o8, lse8 = torch.empty_like(o_t), torch.empty_like(lse_t)
  for qk8 in (False, True):
    fwd8_kernel[(t // 64, b * h)](q8, k8, v8, sq, sk, sv, o8, lse8, BLOCK_M=64, BLOCK_N=32, QK8=qk8, **c8)
    print(f"forward (QK8={qk8}): O max diff", float((o8.float() - o_t.float()).abs().max()), "LSE",
          float((lse8 - lse_t).abs().max()))
    assert torch.allclose(o8.float(), o_t.float(), atol=2e-3) and torch.allclose(lse8, lse_t, atol=1e-4)
  delta_t, d8_t, d8t_t = tma.tree_bwd8_interpret(deq[0], deq[1], qkv_deq, o_t, do, lse_t, cos, sin, g)
  delta8 = torch.empty((b, h, t))
  d8, d8t = torch.zeros_like(d8_t), torch.zeros_like(d8t_t)
  bwd_dq8_kernel[(t // 64, b * h)](q8, k8, v8, sq, sk, sv, o_t, do, lse_t, cos, sin, g, delta8, d8, d8t,
                                   BLOCK_M=64, BLOCK_N=32, **c8)
  bwd_dkdv8_kernel[(t // 64, b * h)](q8, k8, v8, sq, sk, sv, do, lse_t, delta8, cos, sin, g, d8, d8t, d8, d8t,
                                     BLOCK_M=32, BLOCK_N=64, **c8)
  same = float((d8.view(torch.uint8) == d8_t.view(torch.uint8)).float().mean())
  same_t = float((d8t.view(torch.uint8) == d8t_t.view(torch.uint8)).float().mean())
  print(f"backward: delta max diff {float((delta8 - delta_t).abs().max())}; e5m2 bytes equal {same:.5f} / "
        f"token-last {same_t:.5f}")
  assert torch.allclose(delta8, delta_t, atol=1e-5) and same > 0.999 and same_t > 0.999
  print("interpret: ok")


if __name__ == "__main__":
  main()
