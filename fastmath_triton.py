"""Triton math helpers for the memory-bound kernels, in the fewest instructions (imports triton).

Nsight Compute on the H200 shows the loss and SwiGLU kernels bound by instruction issue before
DRAM (docs/model.md), and Triton's own exp and division spend most of their instructions on edge
cases those kernels never meet: tl.exp / ex2.approx.f32 wraps MUFU.EX2 in a compare and two
conditional multiplies for results below 2^-126, and 1 / x (div.full.f32) adds a range test, a
conditional multiply and a select around MUFU.RCP. The helpers below are the bare MUFU
instructions with flush-to-zero (largest error 2 ulp; a result below 2^-126 becomes 0).

Triton's CPU interpreter runs no inline PTX, so under TRITON_INTERPRET=1 the helpers fall back to
tl.math (the same values up to those ulps), which is what the interpreter checks exercise.
"""
import os

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
_PTX: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")


@triton.jit
def exp2(x):
  """2^x in fp32: MUFU.EX2, flushing results below 2^-126 to 0."""
  if _PTX:
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                     is_pure=True, pack=1)
  return tl.math.exp2(x)


@triton.jit
def rcp(x):
  """1 / x in fp32: MUFU.RCP (1 ulp), flushing subnormals."""
  if _PTX:
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                     is_pure=True, pack=1)
  return 1.0 / x


@triton.jit
def sigmoid(x):
  """1 / (1 + e^-x) in fp32: four instructions; 0 and 1 at the ends (e^-x = inf gives 1/inf = 0)."""
  return rcp(1.0 + exp2(x * -LOG2E))


@triton.jit
def to_bf16(x):
  """fp32 -> bf16 (round to nearest even), two per instruction (F2FP.BF16.F32.PACK_AB); where a
  kernel stores its bf16 values and reads them back, Triton's .to() compiles to one F2F each, an
  instruction of the quarter-rate conversion pipe."""
  if _PTX:
    return tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,f,f", [x], dtype=tl.bfloat16,
                                     is_pure=True, pack=2)
  return x.to(tl.bfloat16)


@triton.jit
def cast(x, dtype: tl.constexpr):
  """x.to(dtype), through to_bf16 when dtype is bfloat16."""
  if dtype == tl.bfloat16:
    return to_bf16(x)
  return x.to(dtype)
