"""A stand-in for jax_triton that compiles each Triton kernel a traced function launches for the
H100/H200 (sm_90) instead of launching it, so a CPU machine (CI) catches what would otherwise fail
only on a GPU: a kernel that does not compile (a non-constexpr global, a dtype the op refuses), or
one that needs more shared memory than an SM has.

The signature and specialization follow jax-triton 0.3.1's own compile (every array argument a
16-byte-aligned pointer, every keyword a constexpr), and the compile runs all of Triton's stages
down to a cubin (ptxas ships inside the triton wheel). Outputs are zeros of the declared shapes:
only tracing goes through here, never numbers.
"""
import importlib

import jax.numpy as jnp

SM90_SHARED_BYTES = 232_448   # the most shared memory one H100/H200 block may use (227 KiB)
_TRITON_TYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8e4nv",
                "float8_e5m2": "fp8e5", "int32": "i32", "int64": "i64", "uint16": "u16", "uint8": "u8",
                "int8": "i8", "bool": "i1"}


class HopperCompiler:
  """jax_triton's `triton_call` interface; `compiled` lists (kernel name, shared bytes) per distinct
  compile."""

  def __init__(self):
    self._cache = {}

  @property
  def compiled(self):
    return [(key[0].__name__, k.metadata.shared) for key, k in self._cache.items()]

  @property
  def constants(self):
    """(kernel name, its keyword constants as a dict) per distinct compile."""
    return [(key[0].__name__, dict(key[2])) for key in self._cache]

  def triton_call(self, *args, kernel, out_shape, grid, num_warps=None, num_stages=None,  # pylint: disable=unused-argument
                  input_output_aliases=None, zeroed_outputs=(), **consts):  # pylint: disable=unused-argument
    import triton  # pylint: disable=import-outside-toplevel
    from triton.backends.compiler import GPUTarget  # pylint: disable=import-outside-toplevel
    from triton.compiler import ASTSource  # pylint: disable=import-outside-toplevel
    single = not isinstance(out_shape, (tuple, list))
    outs = [out_shape] if single else list(out_shape)
    arrays = list(args) + outs
    names = kernel.arg_names
    assert len(names) == len(arrays) + len(consts), (kernel.__name__, len(names), len(arrays), sorted(consts))
    signature = {n: "*" + _TRITON_TYPE[jnp.dtype(a.dtype).name] for n, a in zip(names, arrays)}
    signature.update({n: "constexpr" for n in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(arrays))}
    key = (kernel, tuple(signature.items()), tuple(sorted(consts.items())), num_warps, num_stages)
    if key not in self._cache:
      src = ASTSource(kernel, signature, constexprs=dict(consts), attrs=attrs)
      opts = {"num_warps": num_warps or 4, "num_stages": num_stages or 3}
      self._cache[key] = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    got = tuple(jnp.zeros(o.shape, o.dtype) for o in outs)
    return got[0] if single else got


def patch(monkeypatch):
  """Routes every Triton launch of the product through a fresh HopperCompiler; returns it."""
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import errors  # pylint: disable=import-outside-toplevel
  compiler = HopperCompiler()
  monkeypatch.setattr(errors, "triton_kernels", lambda name, option, section="model": (compiler, importlib.import_module(name)))
  monkeypatch.setattr(attention_kernel, "_triton",
                      lambda: (compiler, importlib.import_module("attention_kernel_triton")))
  return compiler
