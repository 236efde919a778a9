"""Dev (GPU; --compile_only, --check_patch, --interpret on a CPU): the attention kernels (forward,
dQ, dK/dV) with TMA descriptors made on the device and Triton's automatic warp specialization,
called through jax-triton 0.3.1, against the tree's kernels at the speedrun shape.

Why this needs patches. The attention kernels sit well above their memory floor (docs/model.md,
"Forty-sixth session"): they are bound by latency, not by what they issue. Hopper hides that latency
with TMA loads and warp specialization. Triton 3.6 warp-specializes our key loop for sm_90 only when
its loads go through tensor descriptors; with pointer loads its pass asserts (forty-fifth session).
Device-side descriptors (tl.make_tensor_descriptor) live in a global scratch buffer. Triton appends
it to every kernel's parameters as a hidden pointer, followed by a profile scratch. jaxlib's
launcher (jaxlib/gpu/triton_kernels.cc, KernelCall::Launch) passes null for both, so such a kernel
would fault. Two more gaps in jax-triton 0.3.1: it gives every array it is handed a place in the
kernel's signature, and it launches with the num_warps it was asked for, where warp
specialization adds warps (the 4 asked become 12). `enable()` patches jax-triton for all three:
- `scratch_call` hands the kernel one more output than it declares, the scratch buffer. The
  signature is trimmed to the declared arguments, so jaxlib passes the buffer where the kernel
  reads its global scratch; the null meant for that slot lands in the profile scratch, and the
  trailing null is never read.
- the PTX compile step records Triton's metadata (warps, scratch), and the kernel object is
  built with the compiled warp count.

  python bench/dev_tma_attention.py --compile_only           # CPU: compile for sm_90, print warps, shared, scratch
  TRITON_INTERPRET=1 python bench/dev_tma_attention.py --interpret   # CPU with torch: the kernels' values
  PYTHONPATH=DIR_WITH_JAX_TRITON python bench/dev_tma_attention.py --check_patch   # CPU only: the patches, to the lowering
  python bench/dev_tma_attention.py --rounds=3 --out=FILE    # GPU: check against the tree's kernels, then time them

On a GPU it first checks each variant's outputs (O and LSE; dQ, dK and dV) against the tree's
kernels on the same inputs, then times them interleaved (device time from a profiler trace,
bench/dev_memory_kernels). A variant that fails to compile, run or match is recorded with its error,
not raised. Nothing here is in the product.
"""
import argparse
import math
import os
import statistics
import sys
import tempfile
import types

import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import attention_kernel_triton as tree_kernels  # pylint: disable=wrong-import-position

# (BLOCK_M, BLOCK_N, warps, stages, warp-specialized) per kernel: the tree's tiles (attention_kernel's
# _FWD, _DQ, _DKDV at head dim 32), with and without warp specialization; one stage fewer; and, for the
# forward, a larger tile. (dQ with 2 or 3 stages fails Triton 3.6's warp-specialization pass; a
# variant missing from dQ or dK/dV is not run as a backward.)
VARIANTS = {
    "fwd": {"tma": (64, 32, 4, 3, False), "tma_ws": (64, 32, 4, 3, True), "tma_ws_less": (64, 32, 4, 2, True),
            "tma_ws_128": (128, 64, 8, 2, True)},
    "dq": {"tma": (64, 32, 4, 4, False), "tma_ws": (64, 32, 4, 4, True)},
    "dkdv": {"tma": (32, 64, 4, 3, False), "tma_ws": (32, 64, 4, 3, True), "tma_ws_less": (32, 64, 4, 2, True)},
}
VARIANTS["dq8"], VARIANTS["dkdv8"] = VARIANTS["dq"], VARIANTS["dkdv"]   # the step's FP8 kernels: the same tiles


@triton.jit
def _tiles(X, B: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
           STRIDE: tl.constexpr):
  """A descriptor of [ROWS, D] boxes over X seen as B*T rows of H*D features, rows STRIDE apart."""
  return tl.make_tensor_descriptor(X, shape=[B * T, H * D], strides=[STRIDE, 1], block_shape=[ROWS, D])


@triton.jit
def _rows(X, N: tl.constexpr, ROWS: tl.constexpr):
  """A descriptor of ROWS-long runs over a flat array of N values (LSE, delta)."""
  return tl.make_tensor_descriptor(X, shape=[N], strides=[1], block_shape=[ROWS])


@triton.jit
def fwd_tma_kernel(Q, K, QKV, O, LSE, SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr,
                   H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   WS: tl.constexpr):
  """attention_kernel_triton.fwd_kernel's causal forward (rotated q, k [B, T, H, D]; V read in place
  from the packed [B, T, 3, H, D] projection), its tiles moved by TMA: each tensor is a 2-D view of
  B*T rows, and a head's tile is a [rows, D] box at column h*D. T must be a multiple of BLOCK_M."""
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M   # the longest rows first
  bh = tl.program_id(1)
  row0 = (bh // H) * T
  col = (bh % H) * D
  ROW: tl.constexpr = H * D
  q_desc = _tiles(Q, B, T, H, D, BLOCK_M, ROW)
  k_desc = _tiles(K, B, T, H, D, BLOCK_N, ROW)
  v_desc = _tiles(QKV + 2 * ROW, B, T, H, D, BLOCK_N, 3 * ROW)
  _fwd_tma_tile(q_desc, k_desc, v_desc, _tiles(O, B, T, H, D, BLOCK_M, ROW), LSE, bh, row0, col, start_m, SM_SCALE,
                T, D, BLOCK_M, BLOCK_N, WS)


@triton.jit
def _fwd_tma_tile(q_desc, k_desc, v_desc, o_desc, LSE, bh, row0, col, start_m, SM_SCALE: tl.constexpr,
                  T: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):
  """The causal forward for the BLOCK_M queries at start_m of head bh (rows from row0, columns from col
  in the descriptors' 2-D views): O through o_desc, LSE stored."""
  q = q_desc.load([row0 + start_m, col])
  qk_scale = SM_SCALE * 1.4426950408889634
  m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
  l_i = tl.zeros([BLOCK_M], tl.float32)
  acc = tl.zeros([BLOCK_M, D], tl.float32)
  offs_m = start_m + tl.arange(0, BLOCK_M)
  offs_n = tl.arange(0, BLOCK_N)
  # One loop over every key block up to the diagonal, the causal mask on all of them (the warp-
  # specialized loop must be a single tl.range).
  for start_n in tl.range(0, start_m + BLOCK_M, BLOCK_N, warp_specialize=WS):
    k = k_desc.load([row0 + start_n, col])
    qk = tl.dot(q, tl.trans(k))
    qk = tl.where(offs_m[:, None] >= (start_n + offs_n)[None, :], qk, -1.0e6)
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = v_desc.load([row0 + start_n, col])
    acc = tl.dot(p.to(v.dtype), v, acc)
    m_i = m_new
  acc = acc / l_i[:, None]
  tl.store(LSE + bh * T + offs_m, m_i + tl.math.log2(l_i))
  o_desc.store([row0 + start_m, col], acc.to(o_desc.dtype))


@triton.jit
def _dq_body(Q, K, V, O, DO, LSE, DELTA, SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr,
             H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             V_STRIDE: tl.constexpr, WS: tl.constexpr):
  """bwd_dq_kernel's work with TMA (causal; q, k, o, dO [B, T, H, D], V's rows V_STRIDE apart; LSE,
  DELTA [B, H, T]): delta = rowsum(O dO) stored, and (dQ * SM_SCALE, the queries, b*H + h, the
  head's first row and column), one loop over the key blocks the BLOCK_M queries see."""
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
  bh = tl.program_id(1)
  row0 = (bh // H) * T
  col = (bh % H) * D
  k_desc = _tiles(K, B, T, H, D, BLOCK_N, H * D)
  v_desc = _tiles(V, B, T, H, D, BLOCK_N, V_STRIDE)
  q = _tiles(Q, B, T, H, D, BLOCK_M, H * D).load([row0 + start_m, col])
  do = _tiles(DO, B, T, H, D, BLOCK_M, H * D).load([row0 + start_m, col])
  o = _tiles(O, B, T, H, D, BLOCK_M, H * D).load([row0 + start_m, col])
  lse = _rows(LSE, B * H * T, BLOCK_M).load([bh * T + start_m])
  delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
  offs_m = start_m + tl.arange(0, BLOCK_M)
  offs_n = tl.arange(0, BLOCK_N)
  tl.store(DELTA + bh * T + offs_m, delta)
  qk_scale = SM_SCALE * 1.4426950408889634
  dq = tl.zeros([BLOCK_M, D], tl.float32)
  for start_n in tl.range(0, start_m + BLOCK_M, BLOCK_N, warp_specialize=WS):
    k = k_desc.load([row0 + start_n, col])
    v = v_desc.load([row0 + start_n, col])
    p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
    p = tl.where(offs_m[:, None] >= (start_n + offs_n)[None, :], p, 0.0)   # where: p may be inf there
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq)
  return dq * SM_SCALE, offs_m, bh, row0, col


@triton.jit
def _dkdv_body(Q, K, V, DO, LSE, DELTA, SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr,
               H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               V_STRIDE: tl.constexpr, WS: tl.constexpr):
  """bwd_dkdv_kernel's work with TMA: (dK * SM_SCALE, dV, the keys, b*H + h, the head's first row and
  column) for BLOCK_N keys, one loop over the query blocks that see them (from the keys' own on)."""
  start_n = tl.program_id(0) * BLOCK_N
  bh = tl.program_id(1)
  row0 = (bh // H) * T
  col = (bh % H) * D
  q_desc = _tiles(Q, B, T, H, D, BLOCK_M, H * D)
  do_desc = _tiles(DO, B, T, H, D, BLOCK_M, H * D)
  lse_desc = _rows(LSE, B * H * T, BLOCK_M)
  delta_desc = _rows(DELTA, B * H * T, BLOCK_M)
  k = _tiles(K, B, T, H, D, BLOCK_N, H * D).load([row0 + start_n, col])
  v = _tiles(V, B, T, H, D, BLOCK_N, V_STRIDE).load([row0 + start_n, col])
  offs_n = start_n + tl.arange(0, BLOCK_N)
  offs_m = tl.arange(0, BLOCK_M)
  qk_scale = SM_SCALE * 1.4426950408889634
  dk = tl.zeros([BLOCK_N, D], tl.float32)
  dv = tl.zeros([BLOCK_N, D], tl.float32)
  for start_m in tl.range(start_n, T, BLOCK_M, warp_specialize=WS):
    q = q_desc.load([row0 + start_m, col])
    lse = lse_desc.load([bh * T + start_m])
    p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
    p_t = tl.where((start_m + offs_m)[None, :] >= offs_n[:, None], p_t, 0.0)
    do = do_desc.load([row0 + start_m, col])
    dv = tl.dot(p_t.to(do.dtype), do, dv)
    delta = delta_desc.load([bh * T + start_m])
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk)
  return dk * SM_SCALE, dv, offs_n, bh, row0, col


@triton.jit
def dq_tma_kernel(Q, K, V, O, DO, LSE, DELTA, DQ, SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr,
                  H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  WS: tl.constexpr):
  """attention_kernel_triton.bwd_dq_kernel with TMA: dQ and delta for BLOCK_M queries."""
  dq, _, _, row0, col = _dq_body(Q, K, V, O, DO, LSE, DELTA, SM_SCALE, B, T, H, D, BLOCK_M, BLOCK_N, H * D, WS)
  start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
  _tiles(DQ, B, T, H, D, BLOCK_M, H * D).store([row0 + start_m, col], dq.to(DQ.dtype.element_ty))


@triton.jit
def dkdv_tma_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr,
                    H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    WS: tl.constexpr):
  """attention_kernel_triton.bwd_dkdv_kernel with TMA: dK, dV for BLOCK_N keys."""
  dk, dv, _, _, row0, col = _dkdv_body(Q, K, V, DO, LSE, DELTA, SM_SCALE, B, T, H, D, BLOCK_M, BLOCK_N, H * D, WS)
  start_n = tl.program_id(0) * BLOCK_N
  _tiles(DK, B, T, H, D, BLOCK_N, H * D).store([row0 + start_n, col], dk.to(DK.dtype.element_ty))
  _tiles(DV, B, T, H, D, BLOCK_N, H * D).store([row0 + start_n, col], dv.to(DV.dtype.element_ty))


# The training step's kernels (attention_kernel._dqkv8, x Wqkv's FP8 backward): the same arguments as
# bwd_dq_rope_fp8_kernel and bwd_dkdv_rope_fp8_kernel (V read in place from the packed projection,
# dQ and dK rotated back, e5m2 dQKV * G stored packed and token-last by the tree's _store_dqkv8).
@triton.jit
def dq_rope_fp8_tma_kernel(Q, K, QKV, O, DO, LSE, COS, SIN, G, DELTA, DQKV, DQKV_T, SM_SCALE: tl.constexpr,
                           B: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):
  dq, offs_m, bh, _, _ = _dq_body(Q, K, QKV + 2 * H * D, O, DO, LSE, DELTA, SM_SCALE, B, T, H, D, BLOCK_M, BLOCK_N,
                                  3 * H * D, WS)
  cos, sin = tree_kernels._rope_tile(COS, SIN, offs_m, T, D)  # pylint: disable=protected-access
  tree_kernels._store_dqkv8(DQKV, DQKV_T, tl.load(G), tree_kernels._unrotate(dq, cos, sin, BLOCK_M, D),  # pylint: disable=protected-access
                            bh // H, bh % H, 0, offs_m, T, H, D)


@triton.jit
def dkdv_rope_fp8_tma_kernel(Q, K, QKV, DO, LSE, DELTA, COS, SIN, G, DQKV_IN, DQKV_T_IN, DQKV, DQKV_T,
                             SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
                             D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):
  dk, dv, offs_n, bh, _, _ = _dkdv_body(Q, K, QKV + 2 * H * D, DO, LSE, DELTA, SM_SCALE, B, T, H, D, BLOCK_M,
                                        BLOCK_N, 3 * H * D, WS)
  cos, sin = tree_kernels._rope_tile(COS, SIN, offs_n, T, D)  # pylint: disable=protected-access
  g = tl.load(G)
  tree_kernels._store_dqkv8(DQKV, DQKV_T, g, tree_kernels._unrotate(dk, cos, sin, BLOCK_N, D),  # pylint: disable=protected-access
                            bh // H, bh % H, 1, offs_n, T, H, D)
  tree_kernels._store_dqkv8(DQKV, DQKV_T, g, dv, bh // H, bh % H, 2, offs_n, T, H, D)  # pylint: disable=protected-access


KERNELS = {"fwd": (fwd_tma_kernel, ["*bf16"] * 4 + ["*fp32"]),
           "dq": (dq_tma_kernel, ["*bf16"] * 5 + ["*fp32"] * 2 + ["*bf16"]),
           "dkdv": (dkdv_tma_kernel, ["*bf16"] * 4 + ["*fp32"] * 2 + ["*bf16"] * 2),
           "dq8": (dq_rope_fp8_tma_kernel, ["*bf16"] * 5 + ["*fp32"] * 5 + ["*fp8e5"] * 2),
           "dkdv8": (dkdv_rope_fp8_tma_kernel, ["*bf16"] * 4 + ["*fp32"] * 5 + ["*fp8e5"] * 4)}


def _consts(part, variant, b, t, h, d):
  bm, bn, _, _, ws = VARIANTS[part][variant]
  return dict(SM_SCALE=d ** -0.5, B=b, T=t, H=h, D=d, BLOCK_M=bm, BLOCK_N=bn, WS=ws)


def compile_sm90(part, variant, b, t, h, d, capability=90):
  """Triton's own compile of a kernel variant for the GPU (no launch): its metadata (num_warps after
  warp specialization, shared bytes, global_scratch_size / _align) and its cubin."""
  from triton.backends.compiler import GPUTarget  # pylint: disable=import-outside-toplevel
  from triton.compiler import ASTSource  # pylint: disable=import-outside-toplevel
  kernel, dtypes = KERNELS[part]
  _, _, warps, stages, _ = VARIANTS[part][variant]
  consts = _consts(part, variant, b, t, h, d)
  signature = dict(zip(kernel.arg_names, dtypes))
  signature.update({n: "constexpr" for n in consts})
  src = ASTSource(kernel, signature, constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in range(len(dtypes))})
  # jax_triton's import sets TRITON_CACHE_DIR to "", where triton.compile finds no cache: a private one.
  saved = os.environ.get("TRITON_CACHE_DIR")
  os.environ["TRITON_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "dev_tma_attention_cache")
  try:
    for attempt in range(1, ATTEMPTS + 1):   # a failed compile leaves no cache entry: each try is fresh
      try:
        compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": warps, "num_stages": stages})
        _COMPILED[compiled.asm["ttir"]] = compiled
        return compiled
      except RuntimeError:
        if attempt == ATTEMPTS:
          raise
  finally:
    if saved is None:
      del os.environ["TRITON_CACHE_DIR"]
    else:
      os.environ["TRITON_CACHE_DIR"] = saved


# ----------------------------------------------------------------------------- jax-triton patches

_METADATA = {}   # kernel name -> Triton's metadata from the patched PTX compile
_LOWER_AS = None   # check_patch lowers on a CPU as if for "cuda"
# Triton 3.6's warp-specialization pass fails at random on some kernels (the dQ kernels: up to about
# half of the compiles of the same TTIR on a CPU, in one process or across, sometimes 8 in a row), so a
# failed compile is retried, and jax-triton's compile takes compile_sm90's result for the same TTIR
# (after make_ttir, the two paths' TTIR is the same text) instead of passing the kernel through again.
ATTEMPTS = 16
_COMPILED = {}   # TTIR text (after make_ttir) -> compile_sm90's compiled kernel


def _parse(text, backend):
  """A fresh module (and context) from TTIR text: a failed pass pipeline leaves its module half-lowered."""
  from triton._C.libtriton import ir  # pylint: disable=import-outside-toplevel
  context = ir.context()
  ir.load_dialects(context)
  backend.load_dialects(context)
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "kernel.ttir")
    with open(path, "w") as f:
      f.write(text)
    module = ir.parse_mlir_module(path, context)
  module.context = context
  return module


def enable():
  """Patches jax_triton.triton_lib (module-wide, idempotent) as the docstring says."""
  from jax_triton import triton_lib  # pylint: disable=import-outside-toplevel
  if getattr(triton_lib, "_scratch_patched", False):
    return
  lib = triton_lib.triton_kernel_call_lib

  def compile_ptx(ttir, backend, options, capability):
    text = ttir.str()
    for attempt in range(1, ATTEMPTS + 1):
      metadata = {}
      try:
        mod = backend.make_ttir(ttir if attempt == 1 else _parse(text, backend), metadata, options, capability)
        done = _COMPILED.get(mod.str())   # compile_sm90 made this kernel already: its PTX, no second try
        if done is not None:
          _METADATA[done.metadata.name] = {**done.metadata._asdict(), "attempts": 0}
          return triton_lib.CompilationResult(binary=done.asm["ptx"], name=done.metadata.name,
                                              shared_mem_bytes=done.metadata.shared, ttgir=None, llir=None)
        mod = backend.make_ttgir(mod, metadata, options, capability)
        break
      except RuntimeError:
        if attempt == ATTEMPTS:
          raise
    llir = backend.make_llir(mod, metadata, options, capability)
    ptx = backend.make_ptx(llir, metadata, options, capability)
    _METADATA[metadata["name"]] = {**metadata, "attempts": attempt}
    return triton_lib.CompilationResult(binary=ptx, name=metadata["name"], shared_mem_bytes=metadata["shared"],
                                        ttgir=None, llir=None)

  def kernel(name, num_warps, *rest):
    return lib.TritonKernel(name, _METADATA.get(name, {}).get("num_warps", num_warps), *rest)

  proxy = types.SimpleNamespace(**{k: getattr(lib, k) for k in dir(lib) if not k.startswith("__")})
  proxy.TritonKernel = kernel
  original = triton_lib.get_or_create_triton_kernel

  def get_or_create(backend_init_func, platform, fn, arg_dtypes, scalar_args, **kwargs):
    declared = sum(not p.is_constexpr for p in fn.params)
    made, attrs = original(backend_init_func, _LOWER_AS or platform, fn, arg_dtypes[:declared], scalar_args, **kwargs)
    attrs = dict(attrs)
    for i in range(declared, len(arg_dtypes)):   # the scratch buffer: 16-byte aligned like every array
      attrs[(i,)] = [["tt.divisibility", 16]]
    return made, attrs

  triton_lib.compile_ttir_to_ptx_inplace = compile_ptx
  triton_lib.triton_kernel_call_lib = proxy
  triton_lib.get_or_create_triton_kernel = get_or_create
  triton_lib._scratch_patched = True  # pylint: disable=protected-access


def scratch_call(part, variant, args, outs, grid, aliases=None):
  """jax_triton.triton_call of KERNELS[part] with one more output, the global scratch (sized by
  Triton's own compile of the same kernel), dropped from what it returns. Needs enable()."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import jax_triton as jt  # pylint: disable=import-outside-toplevel
  b, t, h, d = args[0].shape
  _, _, warps, stages, _ = VARIANTS[part][variant]
  meta = compile_sm90(part, variant, b, t, h, d).metadata
  per_program = -(-meta.global_scratch_size // meta.global_scratch_align) * meta.global_scratch_align
  # Assumed, not checked here: XLA's buffers start on 128-byte boundaries at least (Triton's
  # global_scratch_align); a misaligned one would fault, which the GPU check records.
  scratch = jax.ShapeDtypeStruct((max(1, grid[0] * grid[1] * per_program),), jnp.uint8)
  got = jt.triton_call(*args, kernel=KERNELS[part][0], out_shape=(*outs, scratch), grid=grid, num_warps=warps,
                       num_stages=stages, input_output_aliases=aliases, **_consts(part, variant, b, t, h, d))
  return got[:-1]


def forward(variant, q_BTHK, k_BTHK, qkv_BT3HK):
  """(O, LSE) of fwd_tma_kernel; V read in place from the packed projection."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  b, t, h, _ = q_BTHK.shape
  outs = (jax.ShapeDtypeStruct(q_BTHK.shape, q_BTHK.dtype), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
  return scratch_call("fwd", variant, (q_BTHK, k_BTHK, qkv_BT3HK), outs, (t // VARIANTS["fwd"][variant][0], b * h))


def backward(variant, q_BTHK, k_BTHK, v_BTHK, o_BTHK, lse_BHT, do_BTHK):
  """(dQ, dK, dV) from dq_tma_kernel (which also makes delta) and dkdv_tma_kernel."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  b, t, h, _ = q_BTHK.shape
  like = jax.ShapeDtypeStruct(q_BTHK.shape, q_BTHK.dtype)
  delta, dq = scratch_call("dq", variant, (q_BTHK, k_BTHK, v_BTHK, o_BTHK, do_BTHK, lse_BHT),
                           (jax.ShapeDtypeStruct((b, h, t), jnp.float32), like),
                           (t // VARIANTS["dq"][variant][0], b * h))
  dk, dv = scratch_call("dkdv", variant, (q_BTHK, k_BTHK, v_BTHK, do_BTHK, lse_BHT, delta), (like, like),
                        (t // VARIANTS["dkdv"][variant][1], b * h))
  return dq, dk, dv


def _reference(q, k, v, do):
  """float64 causal attention: O, LSE (base 2), dQ, dK, dV of [B, T, H, D] arrays."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  t, d = q.shape[1], q.shape[3]
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * d ** -0.5
  s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
  lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
  p = np.exp(s - lse[..., None])
  dp = np.einsum("bqhd,bkhd->bhqk", do, v)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  return (np.einsum("bhqk,bkhd->bqhd", p, v), lse / math.log(2), np.einsum("bhqk,bkhd->bqhd", ds, k) * d ** -0.5,
          np.einsum("bhqk,bqhd->bkhd", ds, q) * d ** -0.5, np.einsum("bhqk,bqhd->bkhd", p, do))


def dqkv8(variant, res, do_BTHK, g, sm_scale):
  """attention_kernel._dqkv8 (kernels=True) with the TMA kernels: e5m2(dQKV g) as [N, 3HK] and [3HK, N]."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  qkv_BT3HK, q_BTHK, k_BTHK, cos_TK, sin_TK, o_BTHK, lse_BHT = res
  b, t, h, d = q_BTHK.shape
  assert abs(sm_scale - d ** -0.5) < 1e-12, sm_scale   # the kernels take 1/sqrt(d), as the model's
  do_BTHK = do_BTHK.astype(q_BTHK.dtype)
  out = (jax.ShapeDtypeStruct(qkv_BT3HK.shape, jnp.float8_e5m2),
         jax.ShapeDtypeStruct((3 * h * d, b * t), jnp.float8_e5m2))
  delta, d8, d8t = scratch_call("dq8", variant, (q_BTHK, k_BTHK, qkv_BT3HK, o_BTHK, do_BTHK, lse_BHT, cos_TK, sin_TK, g),
                                (jax.ShapeDtypeStruct((b, h, t), jnp.float32), *out),
                                (t // VARIANTS["dq8"][variant][0], b * h))
  d8, d8t = scratch_call("dkdv8", variant, (q_BTHK, k_BTHK, qkv_BT3HK, do_BTHK, lse_BHT, delta, cos_TK, sin_TK, g,
                                            d8, d8t), out, (t // VARIANTS["dkdv8"][variant][1], b * h),
                         aliases={9: 0, 10: 1})
  return d8.reshape(b * t, -1), d8t


def install(forward_fn, dqkv8_fn):
  """The speedrun step on other attention kernels (for bench/dev_step_variants.sh): the packed causal
  forward goes through forward_fn(q, k, qkv) -> (O, LSE) and x Wqkv's FP8 backward through
  dqkv8_fn(res, do, g, sm_scale) (attention_kernel._forward with packed_v, _dqkv8 with kernels);
  anything else stays on the tree's."""
  import attention_kernel  # pylint: disable=import-outside-toplevel
  forward_tree, dqkv8_tree = attention_kernel._forward, attention_kernel._dqkv8  # pylint: disable=protected-access

  def forward_other(q, k, v, causal, sm_scale, config, packed_v=False):
    t, d = q.shape[1], q.shape[3]
    if not (packed_v and causal and t % 128 == 0 and abs(sm_scale - d ** -0.5) < 1e-12):
      return forward_tree(q, k, v, causal, sm_scale, config, packed_v)
    return forward_fn(q, k, v)

  def dqkv8_other(res, do, g, sm_scale, kernels):
    return dqkv8_fn(res, do, g, sm_scale) if kernels else dqkv8_tree(res, do, g, sm_scale, kernels)

  attention_kernel._forward = forward_other  # pylint: disable=protected-access
  attention_kernel._dqkv8 = dqkv8_other  # pylint: disable=protected-access


def install_step(variant="tma_ws"):
  """install() with this module's TMA forward and FP8 backward."""
  enable()
  install(lambda q, k, qkv: forward(variant, q, k, qkv), lambda *a: dqkv8(variant, *a))


def interpret_inputs(b=2, t=128, h=3, d=32):
  """Inputs for the interpreter checks (torch, float16; the interpreter gets bf16 dots wrong): the
  packed projection qkv [B, T, 3, H, D], q, k and a cotangent do [B, T, H, D], the RoPE tables
  [T, D/2] and the FP8 backward's scale g."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  qkv = torch.from_numpy(rng.standard_normal((b, t, 3, h, d)).astype(np.float32)).half()
  q, k, do = (torch.from_numpy(rng.standard_normal((b, t, h, d)).astype(np.float32)).half() for _ in range(3))
  ang = np.arange(t)[:, None] * 10_000.0 ** (-np.arange(0, d, 2) / d)
  cos, sin = (torch.from_numpy(np.ascontiguousarray(f(ang), dtype=np.float32)) for f in (np.cos, np.sin))
  g = torch.tensor([64.0])
  return dict(qkv=qkv, q=q, k=k, do=do, cos=cos, sin=sin, g=g)


def tree_bwd8_interpret(q, k, qkv, o, do, lse, cos, sin, g):
  """The tree's FP8 attention backward (bwd_dq_rope_fp8_kernel, then bwd_dkdv_rope_fp8_kernel at the
  tree's 64 x 32 and 32 x 64 tiles) on torch tensors, for the interpreter checks: (delta, the packed
  e5m2 dQKV, its token-last copy)."""
  import torch  # pylint: disable=import-outside-toplevel
  b, t, h, d = q.shape
  c8 = dict(SM_SCALE=d ** -0.5, T=t, H=h, D=d, CAUSAL=True)
  delta = torch.empty((b, h, t))
  d8, d8t = torch.zeros_like(qkv, dtype=torch.float8_e5m2), torch.zeros((3 * h * d, b * t), dtype=torch.float8_e5m2)
  tree_kernels.bwd_dq_rope_fp8_kernel[(t // 64, b * h)](q, k, qkv, o, do, lse, cos, sin, g, delta, d8, d8t,
                                                        BLOCK_M=64, BLOCK_N=32, **c8)
  tree_kernels.bwd_dkdv_rope_fp8_kernel[(t // 64, b * h)](q, k, qkv, do, lse, delta, cos, sin, g, d8, d8t, d8, d8t,
                                                          BLOCK_M=32, BLOCK_N=64, **c8)
  return delta, d8, d8t


def interpret():
  """The three kernels in Triton's CPU interpreter (TRITON_INTERPRET=1, torch) against NumPy float64,
  in float16 (the interpreter gets bf16 dots wrong, bench/dev_interpret_attention.py)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8))
  b, t, h, d = 2, 128, 2, 32
  rng = np.random.default_rng(0)
  q, k, do = (torch.from_numpy(rng.standard_normal((b, t, h, d)).astype(np.float32)).half() for _ in range(3))
  qkv = torch.from_numpy(rng.standard_normal((b, t, 3, h, d)).astype(np.float32)).half()
  v = qkv[:, :, 2].contiguous()
  f64 = lambda x: x.double().numpy()
  o_ref, lse_ref, dq_ref, dk_ref, dv_ref = _reference(f64(q), f64(k), f64(v), f64(do))
  c = dict(SM_SCALE=d ** -0.5, B=b, T=t, H=h, D=d, WS=False)
  for name in VARIANTS["fwd"]:
    bm, bn = VARIANTS["fwd"][name][:2]
    o, lse = torch.empty_like(q), torch.empty((b, h, t))
    fwd_tma_kernel[(t // bm, b * h)](q, k, qkv, o, lse, BLOCK_M=bm, BLOCK_N=bn, **c)
    errs = [np.abs(f64(o) - o_ref).max(), np.abs(f64(lse) - lse_ref).max()]
    print(f"fwd  {name:12s} interpreter, float16: O, LSE (base 2) max errors " + ", ".join(f"{e:.1e}" for e in errs))
    assert errs[0] < 5e-3 and errs[1] < 1e-5, (name, errs)
  # The backward from the exact forward, rounded as the GPU keeps it (einsum's outputs may be strided).
  o = torch.from_numpy(np.ascontiguousarray(o_ref)).half()
  lse = torch.from_numpy(np.ascontiguousarray(lse_ref, dtype=np.float32))
  for name in VARIANTS["dq"]:
    bm, bn = VARIANTS["dq"][name][:2]
    delta, dq = torch.empty((b, h, t)), torch.empty_like(q)
    dq_tma_kernel[(t // bm, b * h)](q, k, v, o, do, lse, delta, dq, BLOCK_M=bm, BLOCK_N=bn, **c)
    bm, bn = VARIANTS["dkdv"][name][:2]
    dk, dv = torch.empty_like(q), torch.empty_like(q)
    dkdv_tma_kernel[(t // bn, b * h)](q, k, v, do, lse, delta, dk, dv, BLOCK_M=bm, BLOCK_N=bn, **c)
    errs = [np.abs(f64(g) - r).max() / np.abs(r).max() for g, r in ((dq, dq_ref), (dk, dk_ref), (dv, dv_ref))]
    print(f"bwd  {name:12s} interpreter, float16: dQ, dK, dV max errors relative to their largest value "
          + ", ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < 5e-3, (name, errs)
  # The step's FP8 kernels against the tree's on the same inputs (V from the packed projection).
  ang = np.arange(t)[:, None] * 10_000.0 ** (-np.arange(0, d, 2) / d)
  cos, sin = (torch.from_numpy(np.ascontiguousarray(f(ang), dtype=np.float32)) for f in (np.cos, np.sin))
  g = torch.tensor([64.0])
  o, lse = torch.empty_like(q), torch.empty((b, h, t))
  tree_kernels.fwd_kernel[(t // 64, b * h)](q, k, qkv, o, lse, SM_SCALE=d ** -0.5, T=t, H=h, D=d, BLOCK_M=64,
                                            BLOCK_N=32, CAUSAL=True, V_ROW=3 * h * d, V_OFF=2 * h * d)
  outs = {"tree": tuple(x.float().numpy() for x in tree_bwd8_interpret(q, k, qkv, o, do, lse, cos, sin, g)[1:])}
  for name in VARIANTS["dq8"]:
    delta = torch.empty((b, h, t))
    d8, d8t = torch.zeros_like(qkv, dtype=torch.float8_e5m2), torch.zeros((3 * h * d, b * t), dtype=torch.float8_e5m2)
    bm, bn = VARIANTS["dq8"][name][:2]
    bm1, bn1 = VARIANTS["dkdv8"][name][:2]
    dq_rope_fp8_tma_kernel[(t // bm, b * h)](q, k, qkv, o, do, lse, cos, sin, g, delta, d8, d8t, BLOCK_M=bm,
                                             BLOCK_N=bn, **c)
    dkdv_rope_fp8_tma_kernel[(t // bn1, b * h)](q, k, qkv, do, lse, delta, cos, sin, g, d8, d8t, d8, d8t,
                                                BLOCK_M=bm1, BLOCK_N=bn1, **c)
    outs[name] = (d8.float().numpy(), d8t.float().numpy())
  assert all(np.count_nonzero(x) > 0.9 * x.size for x in outs["tree"])   # both layouts written
  for name in VARIANTS["dq8"]:
    same = [np.array_equal(x, y) for x, y in zip(outs[name], outs["tree"])]
    print(f"bwd8 {name:12s} interpreter, float16 in, e5m2 out: packed and token-last dQKV the same bytes as the "
          f"tree's: {same}")
    assert all(same), name


def cpu_stand_in():
  """On a CPU: a stand-in for jaxlib's GPU Triton library that records the kernel objects made and
  the launches asked for, jax-triton's lowering registered for the CPU as for "cuda", and enable()'s
  patches on. Returns the two lists (made, launches) it fills."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax._src.lib as jaxlib_lib  # pylint: disable=import-outside-toplevel
  from jax.interpreters import mlir  # pylint: disable=import-outside-toplevel
  made, launches = [], []

  class Launch:  # jaxlib's TritonKernelCall: the parameters jaxlib would pass, in order
    def __init__(self, kernel, *grid_and_params):
      self.kernel, self.grid, self.params = kernel, grid_and_params[:3], grid_and_params[3]
      launches.append(self)

    def to_proto(self, name, metadata):  # pylint: disable=unused-argument
      return b"stand-in"

  stand_in = types.SimpleNamespace(
      TritonKernel=lambda *a: made.append(a) or a, get_compute_capability=lambda device: 90,
      create_array_parameter=lambda *a: ("array",) + a, create_scalar_parameter=lambda *a: ("scalar",) + a,
      get_arch_details=lambda d: "", TritonKernelCall=Launch, TritonAutotunedKernelCall=None,
      get_serialized_metadata=lambda x: x)
  assert not hasattr(getattr(jaxlib_lib, "gpu_triton", None), "get_compute_capability"), "a CPU check"
  jaxlib_lib.gpu_triton = stand_in
  sys.modules["jax._src.lib.gpu_triton"] = stand_in
  from jax_triton import triton_lib  # pylint: disable=import-outside-toplevel
  enable()
  global _LOWER_AS  # pylint: disable=global-statement
  _LOWER_AS = "cuda"
  mlir.register_lowering(triton_lib.triton_kernel_call_p, functools.partial(
      triton_lib.triton_kernel_call_lowering, triton_lib.get_cuda_backend), platform="cpu")
  return made, launches


def check_patch():
  """enable()'s patches on a CPU (a stand-in for jaxlib's GPU library records what it is asked for):
  jax-triton's own compile path must build each variant from the declared arguments alone, give the
  extra array an attribute and ask for the warps Triton compiled; and jax.jit's lowering, through
  jax-triton's lowering rule registered for the CPU, must hand jaxlib the scratch as the last array."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  made, launches = cpu_stand_in()
  from jax_triton import triton_lib  # pylint: disable=import-outside-toplevel
  # The whole lowering, as jit runs it for a GPU: the custom call's results carry the scratch buffer,
  # and jaxlib would get one array parameter more than each kernel declares, the scratch last.
  b, t, h, d = 128, 256, 16, 32
  x = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16)
  lse = jax.ShapeDtypeStruct((b, h, t), jnp.float32)
  text = jax.jit(lambda q, k, qkv: forward("tma_ws", q, k, qkv)).lower(
      x, x, jax.ShapeDtypeStruct((b, t, 3, h, d), jnp.bfloat16)).as_text()
  text += jax.jit(lambda *a: backward("tma_ws", *a)).lower(x, x, x, x, lse, x).as_text()
  for launch, (part, declared) in zip(launches[-3:], (("fwd", 5), ("dq", 8), ("dkdv", 8))):
    kinds = [p[0] for p in launch.params]
    bm, bn = VARIANTS[part]["tma_ws"][:2]
    programs = (t // (bn if part == "dkdv" else bm)) * b * h
    scratch = programs * compile_sm90(part, "tma_ws", b, t, h, d).metadata.global_scratch_size
    print(f"{part:4s} tma_ws lowered: {len(kinds)} array parameters ({declared} declared + the scratch), "
          f"{launch.kernel[1]} warps, grid {launch.grid}, a {scratch}-byte scratch output")
    assert kinds == ["array"] * (declared + 1), kinds
    assert launch.kernel[1] == 12 and f"tensor<{scratch}xui8>" in text, (launch.kernel, scratch)
  # The speedrun step with install_step(): lowered whole (every Triton kernel through jax-triton and
  # the stand-in), it must launch the TMA forward and FP8 backward in place of the tree's.
  import importlib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import errors  # pylint: disable=import-outside-toplevel
  import jax_triton  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel
  from configs import tinystories_h100  # pylint: disable=import-outside-toplevel
  monkeypatch = pytest.MonkeyPatch()   # the product's kernels refuse a CPU backend: let them lower here
  monkeypatch.setattr(errors, "triton_kernels", lambda name, option, section="model": (jax_triton, importlib.import_module(name)))
  monkeypatch.setattr(attention_kernel, "_triton", lambda: (jax_triton, tree_kernels))
  install_step("tma_ws")
  config = tinystories_h100.get_config()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  state = jax.eval_shape(lambda key: train._init_state(config, key), jax.random.key(0))  # pylint: disable=protected-access
  before = len(launches)
  train.make_train_step(config, mesh, on_device=True).lower(state, jax.ShapeDtypeStruct((1_000_000,), np.uint16))
  names = {launch.kernel[0] for launch in launches[before:]}
  tma = {"fwd_tma_kernel", "dq_rope_fp8_tma_kernel", "dkdv_rope_fp8_tma_kernel"}
  print(f"the speedrun step with install_step('tma_ws'): {len(launches) - before} launches; "
        f"{sorted(names & tma)} in, tree's {sorted(names & {'fwd_kernel', 'bwd_dq_rope_fp8_kernel', 'bwd_dkdv_rope_fp8_kernel'})} out")
  assert tma <= names and not names & {"fwd_kernel", "bwd_dq_rope_fp8_kernel", "bwd_dkdv_rope_fp8_kernel"}, names
  # Each kernel through jax-triton's compile path, from the declared arguments alone: for the warp-
  # specialized ones jax-triton must take compile_sm90's result (as scratch_call makes it first), the
  # others it compiles itself; either way with the compiled warps, shared size and scratch.
  for part, (kernel, dtypes) in KERNELS.items():
    for name, (_, _, warps, stages, ws) in VARIANTS[part].items():
      compiled = compile_sm90(part, name, 128, 256, 16, 32).metadata if ws else None
      _, attrs = triton_lib.get_or_create_triton_kernel(
          triton_lib.get_cuda_backend, "cuda", kernel, dtypes + ["*u8"], (), num_warps=warps, num_stages=stages,
          num_ctas=1, compute_capability=90, enable_fp_fusion=True, metaparams=_consts(part, name, 128, 256, 16, 32),
          dump=False)
      reused = _METADATA[kernel.__name__]["attempts"] == 0
      compiled = compiled or compile_sm90(part, name, 128, 256, 16, 32).metadata
      got = made[-1]
      extra = attrs[(len(dtypes),)]
      print(f"{part:5s} {name:12s} kernel object: {got[1]} warps, {got[3]} B shared, "
            f"{'compile_sm90' if reused else 'its own'} compile; the scratch's attribute {extra}; scratch "
            f"{_METADATA[got[0]]['global_scratch_size']} B a program (Triton's own compile: {compiled.global_scratch_size})")
      assert reused == ws, (part, name, reused)
      assert got[1] == compiled.num_warps and got[3] == compiled.shared, (got, compiled.num_warps, compiled.shared)
      assert _METADATA[got[0]]["global_scratch_size"] == compiled.global_scratch_size
      assert extra == [["tt.divisibility", 16]]


def compile_only():
  for part in KERNELS:
    for name, config in VARIANTS[part].items():
      try:
        m = compile_sm90(part, name, 128, 256, 16, 32).metadata
        print(f"{part:4s} {name:12s} {config}: {m.num_warps} warps, {m.shared} B shared, "
              f"{m.global_scratch_size} B scratch a program (align {m.global_scratch_align})")
      except Exception as e:  # pylint: disable=broad-except
        print(f"{part:4s} {name:12s} {config}: compile failed: {type(e).__name__}: {str(e)[:300]}")


def _compare(got, want, tol, min_equal=0.0):
  """(max |got - want| / max |want| per array, the share of equal elements per array, whether every
  error is within tol and every share at least min_equal)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  pairs = [(np.asarray(g, np.float32), np.asarray(w, np.float32)) for g, w in zip(got, want)]
  errs = [float(np.abs(g - w).max() / max(1e-30, float(np.abs(w).max()))) for g, w in pairs]
  equal = [float(np.mean(g == w)) for g, w in pairs]
  return errs, equal, all(math.isfinite(e) and e < tol for e in errs) and min(equal) >= min_equal


def speedrun_inputs():
  """The attention's inputs at the speedrun shape (bench/dev_memory_kernels' B, T, H, D), made by the
  tree's kernels: the packed projection qkv, the RoPE tables, rotated q and k, v, a cotangent do, the
  forward's o and lse, _flash_rope_fwd's residuals res, the FP8 backward's scale g; d, the block cfg."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import dev_memory_kernels as dmk  # pylint: disable=import-outside-toplevel
  import model  # pylint: disable=import-outside-toplevel
  d = dmk.D // dmk.H
  qkv = dmk.rand(0, (dmk.B, dmk.T, 3, dmk.H, d))
  cos, sin = model.rope_tables(dmk.T, d, 10_000.0)
  q, k = jax.jit(attention_kernel._rotated)(qkv, cos, sin)  # pylint: disable=protected-access
  cfg = attention_kernel.block_config(dmk.T, d)
  o, lse = jax.jit(lambda q, k, qkv: attention_kernel._forward(q, k, qkv, True, d ** -0.5, cfg, packed_v=True))(q, k, qkv)  # pylint: disable=protected-access
  _, res = jax.jit(lambda x: attention_kernel._flash_rope_fwd(x, cos, sin, True, d ** -0.5, cfg))(qkv)  # pylint: disable=protected-access
  return dict(d=d, cfg=cfg, qkv=qkv, cos=cos, sin=sin, q=q, k=k, v=qkv[:, :, 2], do=dmk.rand(1, q.shape), o=o,
              lse=lse, res=res, g=jnp.full((1,), 64.0, jnp.float32))


def check_and_time(cases, rounds, result, tolerance, extra=dict):
  """For each part of cases ({part: (inputs, {variant: fn})}, the tree's fn first): every variant's
  outputs checked against the tree's (tolerance(part, name) -> (max error relative to the max, least
  share of equal elements); a variant that fails or raises is recorded and dropped), then all timed
  interleaved for `rounds` (device time from a profiler trace). Fills result's "check", "rows" and
  "medians_us"; extra() adds to each check's record."""
  import jax  # pylint: disable=import-outside-toplevel
  import dev_memory_kernels as dmk  # pylint: disable=import-outside-toplevel
  result.update(check={}, rows=[], medians_us={})
  for part, (inputs, fns) in cases.items():
    want = jax.jit(fns["tree"])(*inputs)
    for name in list(fns)[1:]:
      try:
        errs, equal, ok = _compare(jax.jit(fns[name])(*inputs), want, *tolerance(part, name))
        err = {"max_error_relative_to_max": errs, "equal_share": equal, **extra()}
      except Exception as e:  # pylint: disable=broad-except
        err, ok = {"error": f"{type(e).__name__}: {str(e)[:500]}"}, False
      result["check"][f"{part} {name}"] = {**err, "ok": ok}
      print(f"check {part} {name:12s} {err} {'ok' if ok else 'FAILED'}", flush=True)
      if not ok:
        del fns[name]
    for r in range(rounds):
      for name, fn in fns.items():
        ms, by = dmk.device_ms(fn, *inputs)
        result["rows"].append({"part": part, "round": r, "variant": name, "us": ms * 1e3,
                               "kernels_us": {k: v * 1e3 for k, v in by.items()}})
        print(f"round {r} {part} {name:12s} {ms * 1e3:7.1f} us  "
              + "  ".join(f"{k[:24]} {v * 1e3:.1f}" for k, v in by.items()), flush=True)
    result["medians_us"][part] = {n: statistics.median(row["us"] for row in result["rows"]
                                                       if row["variant"] == n and row["part"] == part) for n in fns}
    print(f"medians {part} (us a call):", {n: round(x, 1) for n, x in result["medians_us"][part].items()}, flush=True)


def command_line(doc, variants, modes):
  """The dev attention scripts' arguments: --variants (default `variants`), --rounds, --out, and a flag
  per CPU mode (modes: {flag: (help, fn)}). Runs the mode asked for and returns None, else the args."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  for flag, (text, _) in modes.items():
    p.add_argument(f"--{flag}", action="store_true", help=text)
  p.add_argument("--variants", default=variants)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  for flag, (_, fn) in modes.items():
    if getattr(args, flag):
      fn()
      return None
  return args


def main():
  args = command_line(__doc__, "tma,tma_ws,tma_ws_less,tma_ws_128", {
      "compile_only": ("CPU: compile for sm_90, print warps, shared, scratch", compile_only),
      "interpret": ("TRITON_INTERPRET=1 with torch: the kernels' values", interpret),
      "check_patch": ("CPU: enable()'s patches on jax-triton's compile path", check_patch)})
  if args is None:
    return
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import dev_memory_kernels as dmk  # pylint: disable=import-outside-toplevel
  enable()
  x = speedrun_inputs()
  d, cfg = x["d"], x["cfg"]
  cases = {  # part -> (its inputs, {variant: fn}); "bwd8" is the training step's FP8 backward
      "fwd": ((x["q"], x["k"], x["qkv"]), {"tree": lambda q, k, qkv: attention_kernel._forward(q, k, qkv, True, d ** -0.5, cfg, packed_v=True)}),  # pylint: disable=protected-access
      "bwd": ((x["q"], x["k"], x["v"], x["o"], x["lse"], x["do"]), {"tree": lambda *a: attention_kernel._backward(*a[:5], a[5], True, d ** -0.5, cfg)}),  # pylint: disable=protected-access
      "bwd8": ((x["res"], x["do"], x["g"]), {"tree": lambda r, dy, g: attention_kernel._dqkv8(r, dy, g, d ** -0.5, True)}),  # pylint: disable=protected-access
  }
  for name in args.variants.split(","):
    if name in VARIANTS["fwd"]:
      cases["fwd"][1][name] = lambda q, k, qkv, name=name: forward(name, q, k, qkv)
    if name in VARIANTS["dq"] and name in VARIANTS["dkdv"]:
      cases["bwd"][1][name] = lambda *a, name=name: backward(name, *a)
      cases["bwd8"][1][name] = lambda r, dy, g, name=name: dqkv8(name, r, dy, g, d ** -0.5)
  result = {**dmk.header("bench/dev_tma_attention.py"), "variants": VARIANTS}
  # LSE's relative error is ~1e-7 when right; O and the gradients within bf16 rounding; e5m2's step is
  # 25% of a value, so an element rounded the other way moves by up to a quarter of the max.
  check_and_time(cases, args.rounds, result, lambda part, name: (0.26, 0.99) if part == "bwd8" else (2e-2, 0.0),
                 lambda: {"warps": {n: m.get("num_warps") for n, m in _METADATA.items()}})
  dmk.write_json(result, args.out or os.path.join(ROOT, "bench", "results", "tma_attention.json"))


if __name__ == "__main__":
  main()
