"""The Triton kernels behind norm_kernel.py: residual add + RMSNorm in one pass, and its backward.

Imports triton at load, so only norm_kernel.py imports it, and only when a kernel is launched.
Each program owns ROWS whole rows of D features (D padded to the power of two BLOCK_D in
registers), so the row reductions stay inside the program. The *_fp8_kernel variants (for
fp8_mlp.py) run the same bodies and also write an e4m3 copy of a result with a scale per row.
"""
import triton
import triton.language as tl

F8_MAX = tl.constexpr(448.0)   # the largest finite e4m3 value (a global read in @jit must be constexpr)


@triton.jit
def _store_fp8_rows(v, mask, offs, rows, N, V8, VS, QMUL):
  """V8[offs] = e4m3(v * q) and VS[rows] = QMUL * max|row| / 448, q = 448 / max|row of v|
  (fp8_mlp.py's scheme: a row's scale factors out of every dot the row enters; QMUL, a 1-element
  array, folds in the scale of the weight that the row meets)."""
  amax = tl.max(tl.where(mask, tl.abs(v), 0.0), 1)
  q = F8_MAX / tl.maximum(amax, 1e-30)
  tl.store(V8 + offs, tl.clamp(v * q[:, None], -F8_MAX, F8_MAX).to(V8.dtype.element_ty), mask=mask)
  tl.store(VS + rows, tl.load(QMUL) * (amax / F8_MAX), mask=rows < N)


@triton.jit
def _add_norm_fwd_rows(X, Y, G, XOUT, H, RSTD, N: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                       ROWS: tl.constexpr, EPS: tl.constexpr, YS=None, Y_SCALED: tl.constexpr = False,
                       HAS_Y: tl.constexpr = True, WRITE_H: tl.constexpr = True, Z=None, HAS_Z: tl.constexpr = False):
  """add_norm_fwd_kernel's body; returns (h in fp32, mask, offsets, rows) of this program's rows.
  With Y_SCALED, Y's rows are multiplied by YS[row] first (Y is then an FP8 dot's unscaled output).
  HAS_Y=False normalizes X itself (the first layer's norm, no add before it): Y and XOUT are
  dummies, never read or written. WRITE_H=False: H is not stored (a caller that needs only the
  e4m3 copy, and remakes h from XOUT and RSTD where it needs it again); H is then a 1-element
  dummy of its dtype. HAS_Z: a second branch Z joins the sum, x + z + y in that order (the parallel
  block's attention output, added before the MLP's)."""
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  cols = tl.arange(0, BLOCK_D)
  mask = (rows[:, None] < N) & (cols[None, :] < D)
  offs = rows[:, None].to(tl.int64) * D + cols[None, :]
  if HAS_Y:
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    if Y_SCALED:
      # Rounded to Y's dtype once scaled: the sublayer's output as fp8_mlp.swiglu returns it.
      y = (y * tl.load(YS + rows, mask=rows < N, other=0.0)[:, None]).to(Y.dtype.element_ty).to(tl.float32)
    s = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
      s += tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
    s = (s + y).to(XOUT.dtype.element_ty)
    tl.store(XOUT + offs, s, mask=mask)
    s = s.to(tl.float32)
  else:
    s = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
  rstd = tl.math.rsqrt(tl.sum(s * s, 1) / D + EPS)
  g = tl.load(G + cols, mask=cols < D, other=0.0).to(tl.float32)
  h = s * rstd[:, None] * g[None, :]   # swiglu_kernel_triton.transpose_fp8_kernel's NORMED repeats this
  if WRITE_H:
    tl.store(H + offs, h.to(H.dtype.element_ty), mask=mask)
  tl.store(RSTD + rows, rstd, mask=rows < N)
  return h, mask, offs, rows


@triton.jit
def add_norm_fwd_kernel(X, Y, G, XOUT, H, RSTD, N: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                        ROWS: tl.constexpr, EPS: tl.constexpr, HAS_Y: tl.constexpr = True):
  """XOUT = X + Y (summed in fp32, stored in XOUT's dtype); H = RMSNorm(XOUT) * G; RSTD saved.

  The norm reads the sum as stored (rounded to the stream's dtype), as model.py's separate
  _residual_add then rms_norm do. HAS_Y=False: H = RMSNorm(X) * G (Y, XOUT unused).
  """
  _add_norm_fwd_rows(X, Y, G, XOUT, H, RSTD, N, D, BLOCK_D, ROWS, EPS, HAS_Y=HAS_Y)


@triton.jit
def add_norm_fwd_scaled_kernel(X, Y, G, YS, XOUT, H, RSTD, N: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                               ROWS: tl.constexpr, EPS: tl.constexpr):
  """add_norm_fwd_kernel with Y = an FP8 dot's unscaled output and YS its row scales (fp8_mlp.py's
  sublayer with mlp_fp8_w2: the MLP's output meets the residual stream here)."""
  _add_norm_fwd_rows(X, Y, G, XOUT, H, RSTD, N, D, BLOCK_D, ROWS, EPS, YS, True)


@triton.jit
def add_norm_fwd_fp8_kernel(X, Y, G, QMUL, YS, XOUT, H, RSTD, H8, HS, N: tl.constexpr, D: tl.constexpr,
                            BLOCK_D: tl.constexpr, ROWS: tl.constexpr, EPS: tl.constexpr, ROW_SCALE: tl.constexpr,
                            Y_SCALED: tl.constexpr, HAS_Y: tl.constexpr = True, WRITE_H: tl.constexpr = True):
  """add_norm_fwd_kernel, and H also in e4m3 (H8): with ROW_SCALE, with its scale per row times QMUL
  (HS); without, as e4m3(H * QMUL) with QMUL the whole tensor's (fp8_mlp.static_scale; HS unused).
  Y_SCALED as in add_norm_fwd_scaled_kernel (YS unused without it); HAS_Y, WRITE_H as in
  _add_norm_fwd_rows."""
  h, mask, offs, rows = _add_norm_fwd_rows(X, Y, G, XOUT, H, RSTD, N, D, BLOCK_D, ROWS, EPS, YS, Y_SCALED, HAS_Y,
                                           WRITE_H)
  # Quantized from H as stored: the e4m3 copy is then that of the bf16 tensor (fp8_mlp.swiglu's).
  h = h.to(H.dtype.element_ty).to(tl.float32)
  if ROW_SCALE:
    _store_fp8_rows(h, mask, offs, rows, N, H8, HS, QMUL)
  else:
    tl.store(H8 + offs, tl.clamp(h * tl.load(QMUL), -F8_MAX, F8_MAX).to(H8.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_fwd_par_kernel(X, Z, Y, G, YS, QMUL, QROW, XOUT, H, RSTD, H8, H8R, HSR, N: tl.constexpr, D: tl.constexpr,
                            BLOCK_D: tl.constexpr, ROWS: tl.constexpr, EPS: tl.constexpr, STATIC8: tl.constexpr,
                            ROW8: tl.constexpr, HAS_Y: tl.constexpr = True, WRITE_H: tl.constexpr = True):
  """The parallel block's norm (fp8_mlp.parallel_sublayer): XOUT = X + Z + Y * YS[row] (the stream,
  the attention's output, the MLP's unscaled FP8 dot output), H = RMSNorm(XOUT) * G, RSTD; with
  STATIC8 H8 = e4m3(H * QMUL) (the next attention's copy, one scale for the tensor), with ROW8 H8R
  in e4m3 with its scale per row times QROW (HSR; the next MLP's copy). HAS_Y=False: H =
  RMSNorm(X) * G (the first layer's norm; Z, Y, YS, XOUT untouched). WRITE_H=False: H is not stored
  (both e4m3 copies still quantize h as H would store it). Unused outputs are 1-element dummies."""
  h, mask, offs, rows = _add_norm_fwd_rows(X, Y, G, XOUT, H, RSTD, N, D, BLOCK_D, ROWS, EPS, YS, True, HAS_Y,
                                           WRITE_H, Z, True)
  h = h.to(H.dtype.element_ty).to(tl.float32)   # both copies quantize H as stored
  if STATIC8:
    tl.store(H8 + offs, tl.clamp(h * tl.load(QMUL), -F8_MAX, F8_MAX).to(H8.dtype.element_ty), mask=mask)
  if ROW8:
    _store_fp8_rows(h, mask, offs, rows, N, H8R, HSR, QROW)


@triton.jit
def embed_norm_fwd_kernel(E, IDS, G, QMUL, XOUT, H, RSTD, H8, N: tl.constexpr, D: tl.constexpr,
                          BLOCK_D: tl.constexpr, ROWS: tl.constexpr, EPS: tl.constexpr, FP8: tl.constexpr):
  """The first layer's norm with the embedding lookup in it: XOUT[r] = E[IDS[r]] rounded to XOUT's
  dtype (the residual stream), H = RMSNorm(XOUT) * G, RSTD saved; with FP8 also H8 = e4m3(H * QMUL)
  (QMUL the whole tensor's static scale, as add_norm_fwd_fp8_kernel without ROW_SCALE). The rows of
  the [V, D] table E come straight from L2 (20 MB at the speedrun's shape), so the step's start has
  no separate gather pass writing the stream for this kernel to read back. H8 and QMUL are
  1-element dummies without FP8."""
  rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
  cols = tl.arange(0, BLOCK_D)
  live = rows < N
  mask = live[:, None] & (cols[None, :] < D)
  ids = tl.load(IDS + rows, mask=live, other=0).to(tl.int64)
  s = tl.load(E + ids[:, None] * D + cols[None, :], mask=mask, other=0.0).to(XOUT.dtype.element_ty)
  offs = rows[:, None].to(tl.int64) * D + cols[None, :]
  tl.store(XOUT + offs, s, mask=mask)
  s = s.to(tl.float32)
  rstd = tl.math.rsqrt(tl.sum(s * s, 1) / D + EPS)
  g = tl.load(G + cols, mask=cols < D, other=0.0).to(tl.float32)
  h = (s * rstd[:, None] * g[None, :]).to(H.dtype.element_ty)
  tl.store(H + offs, h, mask=mask)
  tl.store(RSTD + rows, rstd, mask=live)
  if FP8:   # quantized from H as stored, as add_norm_fwd_fp8_kernel does
    tl.store(H8 + offs, tl.clamp(h.to(tl.float32) * tl.load(QMUL), -F8_MAX, F8_MAX).to(H8.dtype.element_ty),
             mask=mask)


@triton.jit
def _bwd_loads(DXOUT, DH, XOUT, RSTD, DHS, DH2, DHS2, blk, cols, N: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
               DH_SCALED: tl.constexpr, HAS_DXOUT: tl.constexpr, HAS_DH2: tl.constexpr):
  """One block's inputs: (rows, row offsets, mask, s, dh, dxout, rstd, dh's row scale or 1, dh2,
  dh2's row scale); rows past N load zeros, and so does dxout without HAS_DXOUT (DXOUT is then never
  read). Without HAS_DH2 the last two are dh and its scale again (placeholders, never used)."""
  rows = blk * ROWS + tl.arange(0, ROWS)
  mask = (rows[:, None] < N) & (cols[None, :] < D)
  offs = rows[:, None].to(tl.int64) * D + cols[None, :]
  if DH_SCALED:
    dhs = tl.load(DHS + rows, mask=rows < N, other=0.0)
  else:
    dhs = tl.full([ROWS], 1.0, tl.float32)
  s = tl.load(XOUT + offs, mask=mask, other=0.0)
  if HAS_DXOUT:
    dxo = tl.load(DXOUT + offs, mask=mask, other=0.0)
  else:
    dxo = tl.zeros(s.shape, tl.float32)
  dh = tl.load(DH + offs, mask=mask, other=0.0)
  if HAS_DH2:
    dh2, dhs2 = tl.load(DH2 + offs, mask=mask, other=0.0), tl.load(DHS2 + rows, mask=rows < N, other=0.0)
  else:
    dh2, dhs2 = dh, dhs
  return rows, offs, mask, s, dh, dxo, tl.load(RSTD + rows, mask=rows < N, other=0.0), dhs, dh2, dhs2


@triton.jit
def _add_norm_bwd_loop(DXOUT, DH, XOUT, RSTD, G, DHS, QMUL, DX, DY, DG_PART, D8, DS, N: tl.constexpr,
                       D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, PROGRAMS: tl.constexpr,
                       TWO_OUT: tl.constexpr, DH_SCALED: tl.constexpr, FP8: tl.constexpr, HAS_DXOUT: tl.constexpr,
                       DH_MUL: tl.constexpr, IDS=None, SCATTER: tl.constexpr = False, DH2=None, DHS2=None,
                       HAS_DH2: tl.constexpr = False):
  """The persistent backward (add_norm_bwd_kernel's docstring); DH_SCALED, FP8, HAS_DXOUT and HAS_DH2
  as in add_norm_bwd_fp8_kernel, DH_MUL as in add_norm_bwd_kernel. With DH_SCALED and FP8 False, DHS,
  QMUL, D8 and DS are never touched. SCATTER (embed_norm_bwd_kernel): row r's gradient, rounded to
  XOUT's dtype, is added into row IDS[r] of the fp32 table DX instead of being stored as row r."""
  pid = tl.program_id(0)
  cols = tl.arange(0, BLOCK_D)
  g = tl.load(G + cols, mask=cols < D, other=0.0).to(tl.float32)
  dg = tl.zeros([ROWS, BLOCK_D], tl.float32)
  nxt = _bwd_loads(DXOUT, DH, XOUT, RSTD, DHS, DH2, DHS2, pid, cols, N, D, ROWS, DH_SCALED, HAS_DXOUT, HAS_DH2)
  for blk in range(pid, tl.cdiv(N, ROWS), PROGRAMS):
    rows, offs, mask, s, dh, dxo, r, dhs, dh2, dhs2 = nxt
    nxt = _bwd_loads(DXOUT, DH, XOUT, RSTD, DHS, DH2, DHS2, blk + PROGRAMS, cols, N, D, ROWS, DH_SCALED, HAS_DXOUT,
                     HAS_DH2)
    s, dh, dxo = s.to(tl.float32), dh.to(tl.float32), dxo.to(tl.float32)
    if DH_SCALED:
      dh = dh * dhs[:, None]
    if DH_MUL != 1.0:
      dh = dh * DH_MUL
    if HAS_DH2:   # h's second reader's share, in fp32: no [N, D] sum of the two written and read back
      dh += dh2.to(tl.float32) * dhs2[:, None]
    u = dh * g[None, :]
    d = dxo + r[:, None] * u - s * (r * r * r * tl.sum(u * s, 1) / D)[:, None]
    if SCATTER:   # relaxed fp32 atomics: repeated tokens sum in any order, as XLA's scatter-add does
      ids = tl.load(IDS + rows, mask=rows < N, other=0).to(tl.int64)
      tl.atomic_add(DX + ids[:, None] * D + cols[None, :],
                    d.to(XOUT.dtype.element_ty).to(tl.float32), mask=mask, sem="relaxed")
    else:
      tl.store(DX + offs, d.to(DX.dtype.element_ty), mask=mask)
    if TWO_OUT:
      tl.store(DY + offs, d.to(DY.dtype.element_ty), mask=mask)
    if FP8:   # quantized from the gradient as the y input's dtype stores it (fp8_mlp.swiglu's)
      if TWO_OUT:
        d_y = d.to(DY.dtype.element_ty).to(tl.float32)
      else:
        d_y = d.to(DX.dtype.element_ty).to(tl.float32)
      _store_fp8_rows(d_y, mask, offs, rows, N, D8, DS, QMUL)
    dg += dh * s * r[:, None]
  tl.store(DG_PART + pid * D + cols, tl.sum(dg, 0), mask=cols < D)


@triton.jit
def add_norm_bwd_kernel(DXOUT, DH, XOUT, RSTD, G, DX, DY, DG_PART, N: tl.constexpr, D: tl.constexpr,
                        BLOCK_D: tl.constexpr, ROWS: tl.constexpr, PROGRAMS: tl.constexpr,
                        TWO_OUT: tl.constexpr, HAS_DXOUT: tl.constexpr, DH_MUL: tl.constexpr):
  """DX = DY = DXOUT + d(RMSNorm)/d(XOUT)^T (DH DH_MUL); DG_PART[program] = this program's share of
  dL/dG (summed over the PROGRAMS rows outside). DH_MUL: a constant that DH is multiplied by as it
  is read (1.0: none), for a DH that comes scaled up (attention_kernel.flash_attention_qkv_fp8's
  dh_raw).

  With s = XOUT, r = RSTD, u = G * DH: ds = r u - s r^3 mean(u s); dG = sum over rows of DH s r.
  A persistent grid: PROGRAMS programs stride over the blocks of ROWS rows and keep their share
  of dG in registers, so the gain gradient costs PROGRAMS x D partials instead of one row per
  block; the next block's loads are issued before this block's math. When DX and
  DY have one dtype (the bf16 stream), the two gradients are the same array: TWO_OUT=False writes
  it once and the wrapper hands it out twice. HAS_DXOUT=False: the sum's cotangent is zero (the
  last layer's stream, which only the final norm reads) and DXOUT is a dummy never read.
  """
  _add_norm_bwd_loop(DXOUT, DH, XOUT, RSTD, G, RSTD, RSTD, DX, DY, DG_PART, DX, RSTD, N, D, BLOCK_D, ROWS,
                     PROGRAMS, TWO_OUT, False, False, HAS_DXOUT, DH_MUL)


@triton.jit
def add_norm_bwd_fp8_kernel(DXOUT, DH, XOUT, RSTD, G, DHS, QMUL, DH2, DHS2, DX, DY, DG_PART, D8, DS, N: tl.constexpr,
                            D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, PROGRAMS: tl.constexpr,
                            TWO_OUT: tl.constexpr, DH_SCALED: tl.constexpr, FP8: tl.constexpr,
                            HAS_DXOUT: tl.constexpr, DH_MUL: tl.constexpr, HAS_DH2: tl.constexpr = False):
  """add_norm_bwd_kernel for fp8_mlp.py: DH_SCALED multiplies each row of DH by DHS[row] as it is
  read (DH is then an FP8 dot's unscaled output), and FP8 also writes DX in e4m3 (D8) with its
  scale per row times QMUL (DS). HAS_DH2: h has a second cotangent, DH2 (an FP8 dot's unscaled
  output) with row scales DHS2, added in after DH's DH_MUL (the parallel block, whose attention and
  MLP both read the h this norm made). Unused pointers are 1-element arrays. HAS_DXOUT and DH_MUL as
  in add_norm_bwd_kernel."""
  _add_norm_bwd_loop(DXOUT, DH, XOUT, RSTD, G, DHS, QMUL, DX, DY, DG_PART, D8, DS, N, D, BLOCK_D, ROWS,
                     PROGRAMS, TWO_OUT, DH_SCALED, FP8, HAS_DXOUT, DH_MUL, DH2=DH2, DHS2=DHS2, HAS_DH2=HAS_DH2)


@triton.jit
def embed_norm_bwd_kernel(DXOUT, DH, XOUT, RSTD, G, IDS, DE_IN, DH2, DHS2, DE, DG_PART, N: tl.constexpr,
                          D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, PROGRAMS: tl.constexpr,
                          DH_MUL: tl.constexpr, HAS_DH2: tl.constexpr = False):
  """The first norm's backward (add_norm_bwd_kernel with DXOUT, one output) with the embedding
  lookup's backward in it: each row's gradient of the stream, rounded to XOUT's dtype as the stream
  stores it, is added into row IDS[r] of the fp32 table gradient DE (which aliases DE_IN: the head's
  share of the tied table's gradient, or zeros). No [N, D] gradient is written for an XLA scatter to
  read back, at the very end of the step's backward, where AdamW waits on the table's gradient.
  DH_MUL as in add_norm_bwd_kernel, HAS_DH2 (DH2, DHS2) as in add_norm_bwd_fp8_kernel."""
  _add_norm_bwd_loop(DXOUT, DH, XOUT, RSTD, G, RSTD, RSTD, DE, DE, DG_PART, DE, RSTD, N, D, BLOCK_D, ROWS,
                     PROGRAMS, False, False, False, True, DH_MUL, IDS, True, DH2, DHS2, HAS_DH2)
