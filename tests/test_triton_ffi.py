"""Tests of triton_ffi.py (jax-triton's kernel calls moved to jaxlib's typed-FFI launcher).

On the CPU: the rewrite of one lowered op, checked against the typed-FFI calling convention
(target `triton_kernel_call_ffi`, api_version 4, the proto unchanged under `opaque`). On the GPU:
the compiled train-step kernels really go through that target and still compute the same numbers
as the legacy call (each kernel's own test file checks them against plain JAX).
"""
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import triton_ffi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_legacy_op_becomes_typed_ffi_call_with_the_same_proto():
  from jax._src.interpreters import mlir  # pylint: disable=import-outside-toplevel
  from jax._src.lib.mlir import ir  # pylint: disable=import-outside-toplevel
  from jax.extend import core  # pylint: disable=import-outside-toplevel

  proto = zlib.compress(b"\x00kernel-call proto\xff\x80 with binary bytes")
  seen = []
  prim = core.Primitive("fake_triton_call")
  prim.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))

  def lowering(ctx, x):
    # What jax-triton 0.3.1 emits: a legacy call, the proto as its backend_config string.
    results = jax.ffi.ffi_lowering("triton_kernel_call", api_version=2, backend_config=proto,
                                   operand_output_aliases={0: 0})(ctx, x)
    op = triton_ffi.ffi_op(results[0].owner)
    seen.append(ir.DictAttr(op.attributes["backend_config"])["opaque"])
    return results

  mlir.register_lowering(prim, lowering)
  text = jax.jit(prim.bind).lower(jnp.ones(8)).as_text()
  assert "stablehlo.custom_call @triton_kernel_call_ffi" in text
  assert "api_version = 4" in text
  assert "output_operand_alias" in text  # jax-triton's aliasing survives the rewrite
  assert ir.StringAttr(seen[0]).value_bytes == proto


def _xent_case():
  """(loss, dh, dw) of the Triton cross-entropy on fixed inputs, as float32 NumPy."""
  import xent_kernel  # pylint: disable=import-outside-toplevel
  h = jax.random.normal(jax.random.key(0), (2, 64, 128), jnp.float32).astype(jnp.bfloat16)
  w = (0.05 * jax.random.normal(jax.random.key(1), (1000, 128), jnp.float32)).astype(jnp.bfloat16)
  t = jax.random.randint(jax.random.key(2), (2, 64), 0, 1000)
  f = jax.jit(jax.value_and_grad(lambda h, w: xent_kernel.head_cross_entropy("btd,vd->btv", h, w, t, 0.0),
                                 argnums=(0, 1)))
  loss, (dh, dw) = f(h, w)
  return f.lower(h, w).compile().as_text(), [np.asarray(x, np.float32) for x in (loss, dh, dw)]


@pytest.mark.gpu
def test_step_kernels_lower_to_the_ffi_target_and_match_the_legacy_call(tmp_path):
  compiled, got = _xent_case()
  assert "triton_kernel_call_ffi" in compiled and '"triton_kernel_call"' not in compiled
  # The same computation through jax-triton's own legacy lowering, in a fresh process.
  out = tmp_path / "legacy.npz"
  script = (f"import sys; sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, 'tests')!r}]; import numpy as np; "
            f"import test_triton_ffi as t; text, r = t._xent_case(); "
            f"assert 'triton_kernel_call_ffi' not in text; np.savez({str(out)!r}, *r)")
  subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "LM_TRITON_FFI": "0"})
  ref = np.load(out)
  for i, x in enumerate(got):
    np.testing.assert_array_equal(x, ref[f"arr_{i}"])
