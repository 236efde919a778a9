"""jax-triton's kernel calls, lowered to jaxlib's typed-FFI Triton launcher so that XLA can record
them into its command buffers (CUDA graphs).

jax-triton 0.3.1 compiles a `@triton.jit` kernel and lowers the call to the legacy custom call
`triton_kernel_call` (api_version 2). XLA never records a legacy custom call into a command buffer,
so every Triton kernel of the train step split the step's CUDA graphs and was launched alone, with
a launch gap around it. jaxlib registers the same launcher a second time as the typed-FFI handler
`triton_kernel_call_ffi` (the one Pallas's Triton path uses), which reads the same compressed
kernel-call proto from an `opaque` attribute and declares itself command-buffer compatible. `load()`
registers a lowering that runs jax-triton's own lowering (compilation, grid, zeroed outputs, aliases
all stay jax-triton's) and then moves the resulting op to that handler: three attributes change.

Measured effect on the speedrun step: docs/model.md ("Triton calls inside XLA's command buffers").
Set LM_TRITON_FFI=0 to keep jax-triton's legacy lowering (a fallback, should a jaxlib lack the
handler: XLA then fails at compile time with "No registered implementation for FFI custom call").
"""
import os

_LOADED = []  # the jax_triton module once load() has run; a list so no `global` is needed


def ffi_op(op):
  """Rewrites, in place, a lowered legacy `stablehlo.custom_call` whose backend_config is the
  compressed kernel-call proto into the typed-FFI call that carries the proto as `opaque`."""
  from jax._src.lib.mlir import ir  # pylint: disable=import-outside-toplevel
  attrs = getattr(op, "operation", op).attributes
  opaque = ir.StringAttr(attrs["backend_config"]).value_bytes
  attrs["call_target_name"] = ir.StringAttr.get("triton_kernel_call_ffi")
  attrs["api_version"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 4)
  attrs["backend_config"] = ir.DictAttr.get({"opaque": ir.StringAttr.get(opaque)})
  return op


def load():
  """The jax_triton module, with its CUDA lowering moved to the FFI handler (once per process).
  Raises ImportError where jax_triton cannot be imported (a CPU-only jaxlib)."""
  if _LOADED:
    return _LOADED[0]
  import jax_triton  # pylint: disable=import-outside-toplevel
  if os.environ.get("LM_TRITON_FFI", "1") != "0":
    from jax._src.interpreters import mlir  # pylint: disable=import-outside-toplevel
    from jax_triton import triton_lib  # pylint: disable=import-outside-toplevel

    def lowering(ctx, *args, **params):
      results = triton_lib.triton_kernel_call_lowering(triton_lib.get_cuda_backend, ctx, *args, **params)
      ffi_op(results[0].owner)
      return results

    mlir.register_lowering(triton_lib.triton_kernel_call_p, lowering, platform="cuda")
  _LOADED.append(jax_triton)
  return jax_triton
