"""The Triton kernel behind adamw.py's backend='triton': one AdamW step of one parameter leaf in
one pass.

Imports triton at load, so only adamw.py imports it, and only when the kernel is launched.

XLA runs the update as one fusion per leaf, but at ~2.7 TB/s (the speedrun's 17.6M parameters in
~0.2 ms a step, H200 profile): each element reads the parameter, its gradient and both moments and
writes three of them back, 28 bytes, which a flat kernel moves at DRAM speed. The kernel also sums
the new parameters' squares per program, so the step's finiteness check on the parameters
(train.py) needs no pass of its own.
"""
import triton
import triton.language as tl


@triton.jit
def adamw_kernel(P, G, M, V, HYP, P_OUT, M_OUT, V_OUT, SQ, N: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr,
                 EPS: tl.constexpr, WD: tl.constexpr, BLOCK: tl.constexpr):
  """For BLOCK elements of a flat leaf of N: the update of adamw.update, in fp32.

  HYP (fp32[4]) = [lr, the clipping scale of the gradient, 1 - b1^t, 1 - b2^t]: traced values, so
  one compiled kernel serves every step. WD is the weight decay (0 where the leaf is not decayed).
  P_OUT, M_OUT, V_OUT alias P, M, V (the wrapper donates them), so the step updates in place.
  SQ[program] = the sum of squares of this program's new parameters, in fp32. M and V may be fp32
  or bf16 (adamw.MOMENT_DTYPES): the arithmetic is fp32 and each moment is rounded as it is stored.

  Rounding follows the XLA path: the scaled gradient is rounded to G's dtype (clip_by_global_norm's
  cast) and the divisions and square root are IEEE (div_rn, sqrt_rn), as XLA emits them.
  """
  offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
  mask = offs < N
  lr = tl.load(HYP)
  scale = tl.load(HYP + 1)
  bc1 = tl.load(HYP + 2)
  bc2 = tl.load(HYP + 3)
  p = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
  g = (tl.load(G + offs, mask=mask, other=0.0).to(tl.float32) * scale).to(G.dtype.element_ty).to(tl.float32)
  m = (1 - B1) * g + B1 * tl.load(M + offs, mask=mask, other=0.0).to(tl.float32)
  v = (1 - B2) * (g * g) + B2 * tl.load(V + offs, mask=mask, other=0.0).to(tl.float32)
  u = tl.div_rn(tl.div_rn(m, bc1), tl.sqrt_rn(tl.div_rn(v, bc2)) + EPS)
  if WD != 0:
    u = u + WD * p
  p_new = (p - lr * u).to(P_OUT.dtype.element_ty)
  tl.store(P_OUT + offs, p_new, mask=mask)
  tl.store(M_OUT + offs, m.to(M_OUT.dtype.element_ty), mask=mask)
  tl.store(V_OUT + offs, v.to(V_OUT.dtype.element_ty), mask=mask)
  q = p_new.to(tl.float32)
  tl.store(SQ + tl.program_id(0), tl.sum(tl.where(mask, q * q, 0.0), 0))
