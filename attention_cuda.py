"""JAX entry point for the hand-written CUDA attention kernel (attention_cuda.cu).

`cuda_attention(q_BTHK, k_BTHK, v_BTHK)` is a forward-only fused attention for inference and
benchmarks. On first use it compiles attention_cuda.cu with nvcc into a cache directory (one
shared library per source + compiler + JAX FFI header version), loads it with ctypes, registers
its XLA FFI handlers for the CUDA platform, and calls it with `jax.ffi.ffi_call`, so it works
under `jax.jit`. Importing this module needs neither a GPU nor nvcc; `build()` needs only nvcc.
"""
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from errors import UserError

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attention_cuda.cu")
# Machine code for A100 (sm_80) and H100 (sm_90); build() also embeds PTX for newer GPUs.
ARCHS = ("sm_80", "sm_90")
HEAD_DIMS = (32, 64, 128)
DTYPES = (jnp.bfloat16, jnp.float32)
_TARGET = "tinylm_attention_fwd"
_TARGET_INTO = "tinylm_attention_fwd_into"


def cache_dir():
  """Where built libraries go: $TINYLM_CACHE, else ~/.cache/tinylm."""
  root = os.environ.get("TINYLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tinylm")
  return os.path.join(root, "attention_cuda")


_DEFAULT_CUDA_HOME = "/usr/local/cuda"


def _nvcc():
  nvcc = shutil.which("nvcc")
  if nvcc is None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), _DEFAULT_CUDA_HOME):
      if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    raise UserError("nvcc (the CUDA compiler) was not found, so the 'cuda' attention kernel cannot "
                    "be built: install the CUDA toolkit and put its bin/ on PATH (or set CUDA_HOME), "
                    "or use another attention backend (xla, cudnn, triton)")
  return nvcc


def _gencode_flags(archs):
  flags = []
  for arch in archs:
    cc = arch.removeprefix("sm_")
    flags += ["-gencode", f"arch=compute_{cc},code=sm_{cc}"]
  # PTX of the oldest arch lets newer GPUs (e.g. sm_100) JIT-compile the kernel.
  oldest = min((a.removeprefix("sm_") for a in archs), key=int)
  flags += ["-gencode", f"arch=compute_{oldest},code=compute_{oldest}"]
  return flags


def build(archs=ARCHS, out_dir=None, verbose=False):
  """Compiles attention_cuda.cu (no GPU needed) and returns the path of the shared library.

  The library is cached under `out_dir` (default `cache_dir()`) in a file named by a hash of the
  source, the nvcc version, the XLA FFI headers and the flags, so an edit or a toolkit change
  rebuilds and a repeat call is free.
  """
  nvcc = _nvcc()
  include = jax.ffi.include_dir()
  flags = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", *_gencode_flags(archs),
           "-I", include]
  version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
  h = hashlib.sha256()
  for part in (open(SOURCE, "rb").read(), version.encode(), " ".join(flags[:-2]).encode()):
    h.update(part)
  for name in ("ffi.h", "api.h", "c_api.h"):
    h.update(open(os.path.join(include, "xla", "ffi", "api", name), "rb").read())
  out_dir = out_dir or cache_dir()
  path = os.path.join(out_dir, f"attention_cuda_{h.hexdigest()[:16]}.so")
  if os.path.exists(path):
    return path
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)  # rename at the end: no half-written .so
  os.close(fd)
  cmd = [nvcc, *flags, SOURCE, "-o", tmp]
  if verbose:
    print(" ".join(cmd), flush=True)
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    os.remove(tmp)
    raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{result.stderr}")
  os.replace(tmp, path)
  return path


@functools.cache
def _register():
  """Builds (or finds) the library and registers its two FFI handlers once per process."""
  lib = ctypes.cdll.LoadLibrary(build())
  jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.TinylmAttentionFwd), platform="CUDA")
  jax.ffi.register_ffi_target(_TARGET_INTO, jax.ffi.pycapsule(lib.TinylmAttentionFwdInto),
                              platform="CUDA")
  return lib


def _check(q_BTHK, k_BTHK, v_BTHK):
  if q_BTHK.ndim != 4 or k_BTHK.shape != q_BTHK.shape or v_BTHK.shape != q_BTHK.shape:
    raise UserError(f"cuda_attention needs q, k, v of one shape [B, T, H, K]; got "
                    f"{q_BTHK.shape}, {k_BTHK.shape}, {v_BTHK.shape}: reshape them (grouped or "
                    f"cross attention is not supported by this kernel; use the xla backend)")
  if q_BTHK.shape[-1] not in HEAD_DIMS:
    raise UserError(f"cuda_attention supports head_dim in {HEAD_DIMS}, got {q_BTHK.shape[-1]}: "
                    f"change d_model / n_heads, or use the xla or cudnn backend")
  dtypes = {jnp.dtype(x.dtype) for x in (q_BTHK, k_BTHK, v_BTHK)}
  if len(dtypes) != 1 or dtypes.pop() not in [jnp.dtype(d) for d in DTYPES]:
    raise UserError(f"cuda_attention supports bfloat16 or float32 q, k, v of one dtype; got "
                    f"{q_BTHK.dtype}, {k_BTHK.dtype}, {v_BTHK.dtype}: cast them first")
  if jax.default_backend() != "gpu":
    raise UserError(f"the 'cuda' attention kernel needs an NVIDIA GPU, but JAX is running on "
                    f"'{jax.default_backend()}': run on a GPU machine with jax[cuda] installed, or "
                    f"use attention_backend='xla'")


def cuda_attention(q_BTHK, k_BTHK, v_BTHK, causal=True, sm_scale=None, return_lse=False,
                   _out_init=None):
  """Fused attention forward on an NVIDIA GPU: softmax(sm_scale · q kᵀ, causal) v.

  q, k, v: [B, T, H, K], bf16 or fp32, K in (32, 64, 128), any T. sm_scale defaults to
  1/sqrt(K) and must be a Python number (it is compiled into the call). Returns o [B, T, H, K]
  in the input dtype (and, with return_lse, the fp32 natural-log logsumexp of each scaled score
  row, [B, H, T]). Forward only: no gradient is defined.
  `_out_init` (tests only) is an output buffer the kernel must overwrite entirely.
  """
  _check(q_BTHK, k_BTHK, v_BTHK)
  _register()
  B, T, H, K = q_BTHK.shape
  scale = 1.0 / np.sqrt(K) if sm_scale is None else sm_scale
  if not isinstance(scale, (int, float, np.integer, np.floating)):
    raise UserError(f"cuda_attention needs sm_scale as a Python number, got {type(scale).__name__}: "
                    f"pass a float (it becomes a compile-time attribute of the kernel call)")
  out_types = (jax.ShapeDtypeStruct(q_BTHK.shape, q_BTHK.dtype),
               jax.ShapeDtypeStruct((B, H, T), jnp.float32))
  attrs = dict(causal=np.int32(bool(causal)), scale=np.float32(scale))
  if _out_init is None:
    o_BTHK, lse_BHT = jax.ffi.ffi_call(_TARGET, out_types)(q_BTHK, k_BTHK, v_BTHK, **attrs)
  else:
    call = jax.ffi.ffi_call(_TARGET_INTO, out_types, input_output_aliases={3: 0})
    o_BTHK, lse_BHT = call(q_BTHK, k_BTHK, v_BTHK, _out_init, **attrs)
  return (o_BTHK, lse_BHT) if return_lse else o_BTHK
