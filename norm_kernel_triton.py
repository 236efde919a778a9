"""The Triton kernels behind norm_kernel.py: residual add + RMSNorm in one pass, and its backward.

Imports triton at load, so only norm_kernel.py imports it, and only when a kernel is launched.
Each program owns ROWS whole rows of D features (D padded to the power of two BLOCK_D in
registers), so the row reductions stay inside the program.
"""
import triton
import triton.language as tl


@triton.jit
def add_norm_fwd_kernel(X, Y, G, XOUT, H, RSTD, N: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                        ROWS: tl.constexpr, EPS: tl.constexpr):
  """XOUT = X + Y (summed in fp32, stored in XOUT's dtype); H = RMSNorm(XOUT) * G; RSTD saved.

  The norm reads the sum as stored (rounded to the stream's dtype), as model.py's separate
  _residual_add then rms_norm do.
  """
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  cols = tl.arange(0, BLOCK_D)
  mask = (rows[:, None] < N) & (cols[None, :] < D)
  offs = rows[:, None].to(tl.int64) * D + cols[None, :]
  s = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) + tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
  s = s.to(XOUT.dtype.element_ty)
  tl.store(XOUT + offs, s, mask=mask)
  s = s.to(tl.float32)
  rstd = tl.math.rsqrt(tl.sum(s * s, 1) / D + EPS)
  g = tl.load(G + cols, mask=cols < D, other=0.0).to(tl.float32)
  tl.store(H + offs, (s * rstd[:, None] * g[None, :]).to(H.dtype.element_ty), mask=mask)
  tl.store(RSTD + rows, rstd, mask=rows < N)


@triton.jit
def _bwd_loads(DXOUT, DH, XOUT, RSTD, blk, cols, N: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr):
  """One block's inputs: (row offsets, mask, s, dh, dxout, rstd); rows past N load zeros."""
  rows = blk * ROWS + tl.arange(0, ROWS)
  mask = (rows[:, None] < N) & (cols[None, :] < D)
  offs = rows[:, None].to(tl.int64) * D + cols[None, :]
  return (offs, mask, tl.load(XOUT + offs, mask=mask, other=0.0), tl.load(DH + offs, mask=mask, other=0.0),
          tl.load(DXOUT + offs, mask=mask, other=0.0), tl.load(RSTD + rows, mask=rows < N, other=0.0))


@triton.jit
def add_norm_bwd_kernel(DXOUT, DH, XOUT, RSTD, G, DX, DY, DG_PART, N: tl.constexpr, D: tl.constexpr,
                        BLOCK_D: tl.constexpr, ROWS: tl.constexpr, PROGRAMS: tl.constexpr,
                        TWO_OUT: tl.constexpr):
  """DX = DY = DXOUT + d(RMSNorm)/d(XOUT)^T DH; DG_PART[program] = this program's share of dL/dG
  (summed over the PROGRAMS rows outside).

  With s = XOUT, r = RSTD, u = G * DH: ds = r u - s r^3 mean(u s); dG = sum over rows of DH s r.
  A persistent grid: PROGRAMS programs stride over the blocks of ROWS rows and keep their share
  of dG in registers, so the gain gradient costs PROGRAMS x D partials instead of one row per
  block; the next block's loads are issued before this block's math. When DX and
  DY have one dtype (the bf16 stream), the two gradients are the same array: TWO_OUT=False writes
  it once and the wrapper hands it out twice.
  """
  pid = tl.program_id(0)
  cols = tl.arange(0, BLOCK_D)
  g = tl.load(G + cols, mask=cols < D, other=0.0).to(tl.float32)
  dg = tl.zeros([ROWS, BLOCK_D], tl.float32)
  nxt = _bwd_loads(DXOUT, DH, XOUT, RSTD, pid, cols, N, D, ROWS)
  for blk in range(pid, tl.cdiv(N, ROWS), PROGRAMS):
    offs, mask, s, dh, dxo, r = nxt
    nxt = _bwd_loads(DXOUT, DH, XOUT, RSTD, blk + PROGRAMS, cols, N, D, ROWS)
    s, dh, dxo = s.to(tl.float32), dh.to(tl.float32), dxo.to(tl.float32)
    u = dh * g[None, :]
    d = dxo + r[:, None] * u - s * (r * r * r * tl.sum(u * s, 1) / D)[:, None]
    tl.store(DX + offs, d.to(DX.dtype.element_ty), mask=mask)
    if TWO_OUT:
      tl.store(DY + offs, d.to(DY.dtype.element_ty), mask=mask)
    dg += dh * s * r[:, None]
  tl.store(DG_PART + pid * D + cols, tl.sum(dg, 0), mask=cols < D)
