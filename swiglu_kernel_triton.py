"""The Triton kernels behind swiglu_kernel.py: SwiGLU's backward in one pass, and the two projections
next to the activation with it fused into their epilogues.

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
def _tile(pid, N, F, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
  """(row block, column block) of program `pid`, GROUP_M row blocks at a time, so the programs
  resident together read the same few row blocks of the left operand (from L2, not DRAM)."""
  num_m = tl.cdiv(N, BLOCK_M)
  num_n = tl.cdiv(F, BLOCK_N)
  in_group = GROUP_M * num_n
  first_m = (pid // in_group) * GROUP_M
  size_m = tl.minimum(num_m - first_m, GROUP_M)
  return first_m + (pid % in_group) % size_m, (pid % in_group) // size_m


@triton.jit
def swiglu_up_kernel(X, W13, H13, ACT, N, D: tl.constexpr, F: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
  """H13 = X @ W13 (N x D times D x 2F: the gate and up projections) and ACT = silu(gate) * up.

  One program owns BLOCK_N columns of both halves, so the gate and its up value meet in registers
  and the activation is written straight from the accumulators: XLA's path writes H13 and reads it
  back for the activation. The activation uses the gate and up values rounded to H13's dtype, the
  values the backward will read.
  """
  pid_m, pid_n = _tile(tl.program_id(0), N, F, BLOCK_M, BLOCK_N, GROUP_M)
  rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
  cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
  ks = tl.arange(0, BLOCK_K)
  row_ok, col_ok = rows[:, None] < N, cols[None, :] < F
  x_ptrs = X + rows[:, None].to(tl.int64) * D + ks[None, :]
  w_ptrs = W13 + ks[:, None] * (2 * F) + cols[None, :]
  acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
  acc_u = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
  for k in range(0, D, BLOCK_K):
    k_ok = ks < D - k
    x = tl.load(x_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
    wg = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok, other=0.0)
    wu = tl.load(w_ptrs + F, mask=k_ok[:, None] & col_ok, other=0.0)
    acc_g = tl.dot(x, wg, acc_g)
    acc_u = tl.dot(x, wu, acc_u)
    x_ptrs += BLOCK_K
    w_ptrs += BLOCK_K * 2 * F
  gate = acc_g.to(H13.dtype.element_ty)
  up = acc_u.to(H13.dtype.element_ty)
  g32 = gate.to(tl.float32)
  act = g32 * tl.sigmoid(g32) * up.to(tl.float32)
  mask = row_ok & col_ok
  h_offs = rows[:, None].to(tl.int64) * (2 * F) + cols[None, :]
  tl.store(H13 + h_offs, gate, mask=mask)
  tl.store(H13 + h_offs + F, up, mask=mask)
  tl.store(ACT + rows[:, None].to(tl.int64) * F + cols[None, :], act.to(ACT.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_down_bwd_kernel(DY, W2, H13, DH13, N, D: tl.constexpr, F: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
  """DA = DY @ W2^T (N x D times D x F: the gradient of the activation), then both gate gradients
  from it and H13 (swiglu_bwd_kernel's formulas), DH13 = [dgate | dup]: DA never leaves registers
  and stays fp32, where XLA's path writes it in bf16 and reads it back."""
  pid_m, pid_n = _tile(tl.program_id(0), N, F, BLOCK_M, BLOCK_N, GROUP_M)
  rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
  cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
  ks = tl.arange(0, BLOCK_K)
  row_ok, col_ok = rows[:, None] < N, cols[None, :] < F
  dy_ptrs = DY + rows[:, None].to(tl.int64) * D + ks[None, :]
  w_ptrs = W2 + cols[None, :] * D + ks[:, None]   # W2 is F x D: the [k, n] element of W2^T
  acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
  for k in range(0, D, BLOCK_K):
    k_ok = ks < D - k
    dy = tl.load(dy_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
    w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok, other=0.0)
    acc = tl.dot(dy, w, acc)
    dy_ptrs += BLOCK_K
    w_ptrs += BLOCK_K
  mask = row_ok & col_ok
  h_offs = rows[:, None].to(tl.int64) * (2 * F) + cols[None, :]
  gate = tl.load(H13 + h_offs, mask=mask, other=0.0).to(tl.float32)
  up = tl.load(H13 + h_offs + F, mask=mask, other=0.0).to(tl.float32)
  s = tl.sigmoid(gate)
  tl.store(DH13 + h_offs, (acc * up * s * (1.0 + gate * (1.0 - s))).to(DH13.dtype.element_ty), mask=mask)
  tl.store(DH13 + h_offs + F, (acc * gate * s).to(DH13.dtype.element_ty), mask=mask)
