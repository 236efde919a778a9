"""The Triton kernel behind swiglu_kernel.py: SwiGLU's backward, both gate gradients in one pass.

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
