"""The Triton kernels behind swiglu_kernel.py: SwiGLU's backward, both gate gradients in one pass,
and fp8_mlp.py's variants (the backward, and the forward for mlp_fp8_w2) on FP8 dots' outputs.

Imports triton at load, so only swiglu_kernel.py imports it, and only when the kernel is launched.
"""
import triton
import triton.language as tl

from fastmath_triton import cast, sigmoid


@triton.jit
def swiglu_bwd_kernel(H13, DA, DH13, N: tl.constexpr, F: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_F: tl.constexpr):
  """From H13 = [gate | up] (N x 2F) and DA = dL/d(silu(gate) * up) (N x F), DH13 = [dgate | dup].

  With s = sigmoid(gate): dup = DA silu(gate); dgate = DA up s (1 + gate (1 - s)); math in fp32.
  A program owns a BLOCK_R x BLOCK_F tile of one F-wide half, so every load and store is a run of
  BLOCK_F contiguous values per row.
  """
  rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
  cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
  mask = (rows[:, None] < N) & (cols[None, :] < F)
  r64 = rows[:, None].to(tl.int64)
  gate_offs = r64 * (2 * F) + cols[None, :]
  gate = tl.load(H13 + gate_offs, mask=mask, other=0.0).to(tl.float32)
  up = tl.load(H13 + gate_offs + F, mask=mask, other=0.0).to(tl.float32)
  da = tl.load(DA + r64 * F + cols[None, :], mask=mask, other=0.0).to(tl.float32)
  s = sigmoid(gate)
  tl.store(DH13 + gate_offs, (da * up * s * (1.0 + gate * (1.0 - s))).to(DH13.dtype.element_ty), mask=mask)
  tl.store(DH13 + gate_offs + F, (da * gate * s).to(DH13.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_gate_tile(H13, hs, r64, cols, mask, F: tl.constexpr):
  """One tile of a row's [gate | up], an FP8 dot's unscaled output, times the row's scale hs:
  (gate offsets, gate, up in fp32; zeros where masked)."""
  gate_offs = r64 * (2 * F) + cols[None, :]
  gate = tl.load(H13 + gate_offs, mask=mask, other=0.0).to(tl.float32) * hs
  up = tl.load(H13 + gate_offs + F, mask=mask, other=0.0).to(tl.float32) * hs
  return gate_offs, gate, up


# The FP8 kernels below own whole rows (one e4m3 scale per row needs the row's max). A row of F
# features is two tiles, BLOCK_F (the largest power of two <= F) and BLOCK_T (the next power of two
# >= F - BLOCK_F; 0 when F is a power of two), so F = 1344 runs on 1024 + 512 lanes instead of 2048:
# both kernels are bound by instruction issue, and padded lanes cost as much as real ones.
# Masked lanes load zeros, which give zero gradients and activations: they never raise a row max.
# The e4m3 stores need no clamp: the conversion (cvt.rn.satfinite) saturates at +-448.


@triton.jit
def _bwd_fp8_tile(H13, DA, DH13, hs, das, r64, cols, mask, F: tl.constexpr, WRITE_DH13: tl.constexpr):
  """Both gate gradients of one tile, rounded to DH13's dtype (and stored there if WRITE_DH13);
  returns (offsets, dgate, dup as rounded, in fp32, and their largest magnitude per row)."""
  gate_offs, gate, up = _scaled_gate_tile(H13, hs, r64, cols, mask, F)
  da = tl.load(DA + r64 * F + cols[None, :], mask=mask, other=0.0).to(tl.float32) * das
  s = sigmoid(gate)
  dgate = cast(da * up * s * (1.0 + gate * (1.0 - s)), DH13.dtype.element_ty)
  dup = cast(da * gate * s, DH13.dtype.element_ty)
  if WRITE_DH13:
    tl.store(DH13 + gate_offs, dgate, mask=mask)
    tl.store(DH13 + gate_offs + F, dup, mask=mask)
  # The e4m3 copy is quantized from DH13 as stored (fp8_mlp.swiglu's), with one scale per row.
  dgate, dup = dgate.to(tl.float32), dup.to(tl.float32)
  return gate_offs, dgate, dup, tl.max(tl.maximum(tl.abs(dgate), tl.abs(dup)), 1)


@triton.jit
def swiglu_bwd_fp8_kernel(H13, HS, DA, DAS, QMUL, DH13, DH8, DHS, N: tl.constexpr, F: tl.constexpr,
                          BLOCK_F: tl.constexpr, BLOCK_T: tl.constexpr, ROWS: tl.constexpr,
                          WRITE_DH13: tl.constexpr):
  """swiglu_bwd_kernel for fp8_mlp.py, on FP8 dots' unscaled outputs: gate, up = H13 * HS[row] and
  da = DA * DAS[row]. Writes DH13 = [dgate | dup] in its dtype, bf16 (for a bf16 weight gradient; not
  when WRITE_DH13 is False, and DH13 is then a 1-element placeholder of that dtype) and in e4m3
  with one scale per row over both halves (DH8; DHS = QMUL * max|row| / 448), so a program owns
  ROWS whole rows, as a BLOCK_F tile and a BLOCK_T tile (see above).
  """
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  rmask = rows < N
  r64 = rows[:, None].to(tl.int64)
  hs = tl.load(HS + rows, mask=rmask, other=0.0)[:, None]
  das = tl.load(DAS + rows, mask=rmask, other=0.0)[:, None]
  cols = tl.arange(0, BLOCK_F)
  mask = rmask[:, None] & (cols[None, :] < F)
  offs, dgate, dup, amax = _bwd_fp8_tile(H13, DA, DH13, hs, das, r64, cols, mask, F, WRITE_DH13)
  if BLOCK_T > 0:
    cols_t = BLOCK_F + tl.arange(0, BLOCK_T)
    mask_t = rmask[:, None] & (cols_t[None, :] < F)
    offs_t, dgate_t, dup_t, amax_t = _bwd_fp8_tile(H13, DA, DH13, hs, das, r64, cols_t, mask_t, F,
                                                     WRITE_DH13)
    amax = tl.maximum(amax, amax_t)
  q = (448.0 / tl.maximum(amax, 1e-30))[:, None]   # 448: the largest finite e4m3 value
  tl.store(DH8 + offs, (dgate * q).to(DH8.dtype.element_ty), mask=mask)
  tl.store(DH8 + offs + F, (dup * q).to(DH8.dtype.element_ty), mask=mask)
  if BLOCK_T > 0:
    tl.store(DH8 + offs_t, (dgate_t * q).to(DH8.dtype.element_ty), mask=mask_t)
    tl.store(DH8 + offs_t + F, (dup_t * q).to(DH8.dtype.element_ty), mask=mask_t)
  tl.store(DHS + rows, tl.load(QMUL) * (amax / 448.0), mask=rmask)


@triton.jit
def _fwd_fp8_tile(H13, ACT, hs, r64, cols, mask, F: tl.constexpr, WRITE_ACT: tl.constexpr):
  """silu(gate) * up of one tile, rounded to ACT's dtype (and stored there if WRITE_ACT); returns
  (offsets, act as rounded in fp32, its largest magnitude per row)."""
  _, gate, up = _scaled_gate_tile(H13, hs, r64, cols, mask, F)
  act = cast(gate * sigmoid(gate) * up, ACT.dtype.element_ty)
  offs = r64 * F + cols[None, :]
  if WRITE_ACT:
    tl.store(ACT + offs, act, mask=mask)
  # Quantized from act as rounded to ACT's dtype, as fp8_mlp.swiglu quantizes its bf16 activation.
  act = act.to(tl.float32)
  return offs, act, tl.max(tl.abs(act), 1)


@triton.jit
def swiglu_fwd_fp8_kernel(H13, HS, QMUL, ACT, ACT8, AS, N: tl.constexpr, F: tl.constexpr, BLOCK_F: tl.constexpr,
                          BLOCK_T: tl.constexpr, ROWS: tl.constexpr, WRITE_ACT: tl.constexpr):
  """fp8_mlp.py's forward gate with mlp_fp8_w2: gate, up = H13 * HS[row] (an FP8 dot's unscaled
  output, bf16 or e4m3); ACT = silu(gate) * up in its dtype, bf16 (a bf16 weight gradient's operand; not
  written when WRITE_ACT is False, and ACT is then a 1-element placeholder of that dtype) and in e4m3 with one
  scale per row (ACT8; AS = QMUL * max|row| / 448), the operand of the FP8 dot with W2. Rows as
  in swiglu_bwd_fp8_kernel."""
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  rmask = rows < N
  r64 = rows[:, None].to(tl.int64)
  hs = tl.load(HS + rows, mask=rmask, other=0.0)[:, None]
  cols = tl.arange(0, BLOCK_F)
  mask = rmask[:, None] & (cols[None, :] < F)
  offs, act, amax = _fwd_fp8_tile(H13, ACT, hs, r64, cols, mask, F, WRITE_ACT)
  if BLOCK_T > 0:
    cols_t = BLOCK_F + tl.arange(0, BLOCK_T)
    mask_t = rmask[:, None] & (cols_t[None, :] < F)
    offs_t, act_t, amax_t = _fwd_fp8_tile(H13, ACT, hs, r64, cols_t, mask_t, F, WRITE_ACT)
    amax = tl.maximum(amax, amax_t)
  q = (448.0 / tl.maximum(amax, 1e-30))[:, None]   # 448: the largest finite e4m3 value
  tl.store(ACT8 + offs, (act * q).to(ACT8.dtype.element_ty), mask=mask)
  if BLOCK_T > 0:
    tl.store(ACT8 + offs_t, (act_t * q).to(ACT8.dtype.element_ty), mask=mask_t)
  tl.store(AS + rows, tl.load(QMUL) * (amax / 448.0), mask=rmask)


@triton.jit
def transpose_fp8_kernel(X, RS, QMUL, RSTD, G, HL, OUT, N: tl.constexpr, C: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr, SCALED: tl.constexpr, WIDE: tl.constexpr,
                         NORMED: tl.constexpr = False, X8: tl.constexpr = False):
  """OUT [C, N] = X [N, C] transposed, for an FP8 dot that sums over the N rows (cuBLASLt's FP8 path
  wants that axis contiguous in both operands). SCALED: OUT = e4m3(X * RS[row] * QMUL[0]) from any
  float X; else X's bytes as they are (an e4m3 array viewed as uint8). NORMED (with SCALED): X is a
  residual stream and what is scaled is its RMSNorm, h = X * RSTD[row] * G[col] rounded to HL's
  dtype, the values norm_kernel_triton._add_norm_fwd_rows computes (and then need not store); RSTD,
  G, HL are never read otherwise. X8 (with SCALED): X is e4m3 handed over as its bytes (uint8: a
  masked load of an 8-bit float takes no integer fill). A program moves one BLOCK_N x BLOCK_C tile: loads run along C,
  stores along N, the transpose between them in registers and shared memory (Triton's layout
  conversion), on 32-bit values if WIDE, else on the bytes."""
  rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
  cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
  x = tl.load(X + rows[:, None].to(tl.int64) * C + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < C),
              other=0)
  if SCALED:   # saturating conversion (cvt.rn.satfinite), as the other e4m3 stores here
    rs = tl.load(RS + rows, mask=rows < N, other=0.0) * tl.load(QMUL)
    if X8:
      x = x.to(tl.float8e4nv, bitcast=True)
    x = x.to(tl.float32)
    if NORMED:   # the norm kernel's product, in its order, and its rounding
      rstd = tl.load(RSTD + rows, mask=rows < N, other=0.0)
      g = tl.load(G + cols, mask=cols < C, other=0.0).to(tl.float32)
      x = (x * rstd[:, None] * g[None, :]).to(HL.dtype.element_ty).to(tl.float32)
    x = x * rs[:, None]
    if not WIDE:
      x = x.to(OUT.dtype.element_ty)
  elif WIDE:
    x = x.to(tl.int32)
  tl.store(OUT + cols[:, None].to(tl.int64) * N + rows[None, :], tl.trans(x).to(OUT.dtype.element_ty),
           mask=(cols[:, None] < C) & (rows[None, :] < N))
