"""The Triton kernels behind swiglu_kernel.py: SwiGLU's backward, both gate gradients in one pass,
and fp8_mlp.py's variants (the backward, and the forward for mlp_fp8_w2) on FP8 dots' outputs.

Imports triton at load, so only swiglu_kernel.py imports it, and only when the kernel is launched.
"""
import triton
import triton.language as tl


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
  s = tl.sigmoid(gate)
  tl.store(DH13 + gate_offs, (da * up * s * (1.0 + gate * (1.0 - s))).to(DH13.dtype.element_ty), mask=mask)
  tl.store(DH13 + gate_offs + F, (da * gate * s).to(DH13.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_gate_rows(H13, HS, N: tl.constexpr, F: tl.constexpr, BLOCK_F: tl.constexpr, ROWS: tl.constexpr):
  """This program's ROWS whole rows of an FP8 dot's unscaled [gate | up] output, times HS[row]:
  (rows, row mask, element mask, row offsets as int64 [ROWS, 1], column indices, gate offsets,
  gate, up in fp32)."""
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  cols = tl.arange(0, BLOCK_F)
  rmask = rows < N
  mask = rmask[:, None] & (cols[None, :] < F)
  r64 = rows[:, None].to(tl.int64)
  gate_offs = r64 * (2 * F) + cols[None, :]
  hs = tl.load(HS + rows, mask=rmask, other=0.0)[:, None]
  gate = tl.load(H13 + gate_offs, mask=mask, other=0.0).to(tl.float32) * hs
  up = tl.load(H13 + gate_offs + F, mask=mask, other=0.0).to(tl.float32) * hs
  return rows, rmask, mask, r64, cols, gate_offs, gate, up


@triton.jit
def swiglu_bwd_fp8_kernel(H13, HS, DA, DAS, QMUL, DH13, DH8, DHS, N: tl.constexpr, F: tl.constexpr,
                          BLOCK_F: tl.constexpr, ROWS: tl.constexpr):
  """swiglu_bwd_kernel for fp8_mlp.py, on FP8 dots' unscaled outputs: gate, up = H13 * HS[row] and
  da = DA * DAS[row]. Writes DH13 = [dgate | dup] in H13's dtype (for the weight gradient) and in
  e4m3 with one scale per row over both halves (DH8; DHS = QMUL * max|row| / 448), so a program
  owns ROWS whole rows (F padded to BLOCK_F in registers).
  """
  rows, rmask, mask, r64, cols, gate_offs, gate, up = _scaled_gate_rows(H13, HS, N, F, BLOCK_F, ROWS)
  da = tl.load(DA + r64 * F + cols[None, :], mask=mask, other=0.0).to(tl.float32)
  da = da * tl.load(DAS + rows, mask=rmask, other=0.0)[:, None]
  s = tl.sigmoid(gate)
  dgate = da * up * s * (1.0 + gate * (1.0 - s))
  dup = da * gate * s
  dgate, dup = dgate.to(DH13.dtype.element_ty), dup.to(DH13.dtype.element_ty)
  tl.store(DH13 + gate_offs, dgate, mask=mask)
  tl.store(DH13 + gate_offs + F, dup, mask=mask)
  # The e4m3 copy is quantized from DH13 as stored (fp8_mlp.swiglu's), with one scale per row.
  dgate, dup = dgate.to(tl.float32), dup.to(tl.float32)
  amax = tl.maximum(tl.max(tl.where(mask, tl.abs(dgate), 0.0), 1), tl.max(tl.where(mask, tl.abs(dup), 0.0), 1))
  q = (448.0 / tl.maximum(amax, 1e-30))[:, None]   # 448: the largest finite e4m3 value
  tl.store(DH8 + gate_offs, tl.clamp(dgate * q, -448.0, 448.0).to(DH8.dtype.element_ty), mask=mask)
  tl.store(DH8 + gate_offs + F, tl.clamp(dup * q, -448.0, 448.0).to(DH8.dtype.element_ty), mask=mask)
  tl.store(DHS + rows, tl.load(QMUL) * (amax / 448.0), mask=rmask)


@triton.jit
def swiglu_fwd_fp8_kernel(H13, HS, QMUL, ACT, ACT8, AS, N: tl.constexpr, F: tl.constexpr, BLOCK_F: tl.constexpr,
                          ROWS: tl.constexpr):
  """fp8_mlp.py's forward gate with mlp_fp8_w2: gate, up = H13 * HS[row] (an FP8 dot's unscaled
  output); ACT = silu(gate) * up in H13's dtype (the weight gradient's operand) and in e4m3 with one
  scale per row (ACT8; AS = QMUL * max|row| / 448), the operand of the FP8 dot with W2."""
  rows, rmask, mask, r64, cols, gate_offs, gate, up = _scaled_gate_rows(H13, HS, N, F, BLOCK_F, ROWS)
  act = (gate * tl.sigmoid(gate) * up).to(ACT.dtype.element_ty)
  offs = r64 * F + cols[None, :]
  tl.store(ACT + offs, act, mask=mask)
  # Quantized from ACT as stored, as fp8_mlp.swiglu quantizes its bf16 activation.
  act = act.to(tl.float32)
  amax = tl.max(tl.where(mask, tl.abs(act), 0.0), 1)
  q = (448.0 / tl.maximum(amax, 1e-30))[:, None]   # 448: the largest finite e4m3 value
  tl.store(ACT8 + offs, tl.clamp(act * q, -448.0, 448.0).to(ACT8.dtype.element_ty), mask=mask)
  tl.store(AS + rows, tl.load(QMUL) * (amax / 448.0), mask=rmask)
