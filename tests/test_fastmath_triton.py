"""Tests of fastmath_triton.py (the bare-MUFU math of the loss and SwiGLU kernels).

On any machine: the helpers compile for the H100/H200 (sm_90) to the instructions they promise and
to none of the edge-case code they exist to avoid. On a GPU: their values against NumPy float64.
"""
import numpy as np
import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # pylint: disable=wrong-import-position

import fastmath_triton as fm  # pylint: disable=wrong-import-position

N = 1024


@triton.jit
def _apply(X, EXP2, RCP, SIG, BF16, N: tl.constexpr):
  offs = tl.arange(0, N)
  x = tl.load(X + offs)
  tl.store(EXP2 + offs, fm.exp2(x))
  tl.store(RCP + offs, fm.rcp(x))
  tl.store(SIG + offs, fm.sigmoid(x))
  tl.store(BF16 + offs, fm.to_bf16(x))


def test_helpers_compile_to_the_bare_instructions_for_hopper():
  from triton.backends.compiler import GPUTarget  # pylint: disable=import-outside-toplevel
  from triton.compiler import ASTSource  # pylint: disable=import-outside-toplevel
  signature = {"X": "*fp32", "EXP2": "*fp32", "RCP": "*fp32", "SIG": "*fp32", "BF16": "*bf16", "N": "constexpr"}
  src = ASTSource(_apply, signature, constexprs={"N": N}, attrs={(i,): [["tt.divisibility", 16]] for i in range(5)})
  ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
  for instruction in ("ex2.approx.ftz.f32", "rcp.approx.ftz.f32", "cvt.rn.bf16x2.f32"):
    assert instruction in ptx, instruction
  # tl.exp's ex2.approx.f32 (with its subnormal fixups) and 1 / x's div.full.f32 must not appear,
  # nor the one-at-a-time bf16 conversion.
  for avoided in ("ex2.approx.f32", "div.", "cvt.rn.bf16.f32"):
    assert avoided not in ptx, avoided


@pytest.mark.gpu
def test_values_match_numpy_float64():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  import triton_ffi  # pylint: disable=import-outside-toplevel
  jt = triton_ffi.load()
  rng = np.random.default_rng(0)
  x = np.concatenate([np.linspace(-130.0, 130.0, N // 2), rng.standard_normal(N // 2) * 3]).astype(np.float32)
  like = jax.ShapeDtypeStruct((N,), jnp.float32)
  e, r, s, b = jt.triton_call(jnp.asarray(x), kernel=_apply, out_shape=(like, like, like, jax.ShapeDtypeStruct((N,), jnp.bfloat16)),
                              grid=(1,), num_warps=4, N=N)
  x64 = x.astype(np.float64)

  def worst(got, ref, scale):  # largest error in units of `scale` (relative), with its input
    err = np.abs(np.asarray(got, np.float64) - ref) / scale
    i = int(np.argmax(err))
    return f"max error {err[i]:.3g} at x = {x[i]!r} (got {np.asarray(got)[i]!r}, want {ref[i]!r})"

  ref_e = np.exp2(x64)
  normal = ref_e >= 2.0 ** -126   # below that ex2.approx.ftz returns 0, which the helper documents
  assert np.all(np.asarray(e)[~normal] == 0), "exp2 of a result below 2^-126 must flush to 0"
  finite = normal & np.isfinite(np.float32(ref_e))
  e = np.asarray(e)[finite]
  assert np.all(np.abs(e - ref_e[finite]) <= 2.0 ** -21 * ref_e[finite]), worst(e, ref_e[finite], ref_e[finite])
  ref_r = 1.0 / x64
  assert np.all(np.abs(np.asarray(r) - ref_r) <= 2.0 ** -22 * np.abs(ref_r)), worst(r, ref_r, np.abs(ref_r))
  # sigmoid's argument is rounded to fp32 (x * -log2 e) before the exponential, and e^-x has
  # condition number |x|: any fp32 sigmoid is off by up to |x| 2^-24 relative for x << 0 (XLA's
  # too). So the bound is a few ulp of the rounded argument's exact value, plus that.
  t = (x * np.float32(-fm.LOG2E.value)).astype(np.float64)
  ref_s = 1.0 / (1.0 + np.exp2(t))
  assert np.all(np.abs(np.asarray(s) - ref_s) <= 2.0 ** -20 * ref_s + 1e-30), worst(s, ref_s, ref_s)
  true_s = 1.0 / (1.0 + np.exp(-x64))
  bound = (2.0 ** -20 + np.abs(x64) * 2.0 ** -22) * true_s + 1e-30
  assert np.all(np.abs(np.asarray(s) - true_s) <= bound), worst(s, true_s, true_s)
  assert np.array_equal(np.asarray(b).view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))
