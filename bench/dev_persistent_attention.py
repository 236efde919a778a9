"""Dev (GPU; --compile_only on a CPU): persistent attention kernels (a fixed grid of programs, each
looping over many tiles) against the tree's one-tile-a-program kernels at the speedrun shape.

Why. The step's attention kernels run 8,192 programs a call (B*H = 2,048 heads, 4 tiles each) of
about 1 us each; a third to a half of their instructions sit outside the key loop (prologue,
epilogue: bench/dev_sass_mix.py, forty-sixth session), and the forty-seventh session found the TMA
kernels 1.6-2x slower than the tree's (bench/dev_tma_attention.py), most likely from making their
descriptors (a 128-byte write and two proxy fences) in every one of those short programs. Here:
- `ptr`: the tree's own tile code (attention_kernel_triton's _fwd_block, _dq_block, _dkdv_block)
  in a loop over tiles, P programs in all (the grid), heaviest tiles first as in the tree;
- `tma`: the forward with TMA descriptors made once a program, not once a tile (jax-triton
  patched for the global scratch as in bench/dev_tma_attention.py); with `_ws` the key loop warp-
  specialized.
P is a multiple of the 132 SMs (PTR and TMA below give programs an SM per variant).

  python bench/dev_persistent_attention.py --compile_only      # CPU: registers, shared, occupancy
  TRITON_INTERPRET=1 python bench/dev_persistent_attention.py --interpret   # CPU with torch: the values
  PYTHONPATH=DIR_WITH_JAX_TRITON python bench/dev_persistent_attention.py --check_lowering   # CPU: the step
  python bench/dev_persistent_attention.py --rounds=3 --out=F  # GPU: check against the tree, time

Outputs are checked against the tree's kernels on the same inputs (the ptr kernels run the same code
per tile, so the same bits), then timed interleaved (device time from a profiler trace). A variant
that fails to compile, run or match is recorded, not raised. Nothing here is in the product.
"""
import os
import sys

import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import attention_kernel_triton as tk  # pylint: disable=wrong-import-position
import dev_tma_attention as tma  # pylint: disable=wrong-import-position

SMS = 132


@triton.jit
def _tile(tile, NB: tl.constexpr, BH: tl.constexpr, HEAVY_LAST_INDEX: tl.constexpr, HEAD_MAJOR: tl.constexpr):
  """(block index, b*H + h) of a tile, for a round-robin deal (program p takes p, p + P, ...).
  Level-major: tiles numbered level by level, the heaviest level first (HEAVY_LAST_INDEX: the heaviest
  blocks have the highest index, queries; otherwise the lowest, keys). Head-major: a head's NB tiles
  in a row, so the programs running at once share heads' K and V in L2 as the tree's grid does; the
  block index rotates with the head so that a P divisible by NB still deals every level to every
  program."""
  tile += 0 * tl.program_id(0)   # a tensor in the interpreter too, where a range yields ints (folded away)
  if HEAD_MAJOR:
    bh = tile // NB
    return (tile + bh) % NB, bh
  level = tile // BH
  block = NB - 1 - level if HEAVY_LAST_INDEX else level
  return block, tile % BH


@triton.jit
def _store8(DQKV, DQKV_T, g, x, b, hh, part, offs, B: tl.constexpr, T: tl.constexpr, H: tl.constexpr,
            D: tl.constexpr):
  """attention_kernel_triton._store_dqkv8 with the token count B*T given: that one reads B from the
  grid (num_programs(1) = B*H), which a persistent grid does not carry."""
  ROW: tl.constexpr = H * D
  offs_d = tl.arange(0, D)
  x8 = tl.clamp(x * g, -tk.E5M2_MAX, tk.E5M2_MAX).to(tl.float8e5)
  tl.store(DQKV + b.to(tl.int64) * T * 3 * ROW + part * ROW + hh * D + offs[:, None] * (3 * ROW) + offs_d[None, :], x8)
  cols = (part * ROW + hh * D + offs_d).to(tl.int64) * (B * T)
  tl.store(DQKV_T + cols[:, None] + b * T + offs[None, :], tl.trans(x8))


@triton.jit
def fwd_persist_kernel(Q, K, V, O, LSE, SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr,
                       H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       HEAD_MAJOR: tl.constexpr):
  """attention_kernel_triton.fwd_kernel (causal, V read in place from the packed projection) over
  tiles program_id, program_id + P, ..."""
  ROW: tl.constexpr = H * D
  NB: tl.constexpr = T // BLOCK_M
  for tile in tl.range(tl.program_id(0), NB * B * H, tl.num_programs(0), num_stages=1):
    block, bh = _tile(tile, NB, B * H, True, HEAD_MAJOR)
    start_m = block * BLOCK_M
    base = tl.cast(bh // H, tl.int64) * T * ROW + (bh % H) * D
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = tl.load(Q + base + offs_m[:, None] * ROW + tl.arange(0, D)[None, :])
    tk._fwd_block(q, K, V, O, LSE, start_m, bh, base, offs_m, SM_SCALE, T, H, D, BLOCK_M, BLOCK_N, True,  # pylint: disable=protected-access
                  3 * ROW, 2 * ROW)


@triton.jit
def dq8_tile(Q, K, QKV, O, DO, LSE, COS, SIN, g, DELTA, DQKV, DQKV_T, bh, start_m, SM_SCALE: tl.constexpr,
             B: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr):
  """bwd_dq_rope_fp8_kernel's work for the BLOCK_M queries at start_m of head bh (the tree's _dq_block;
  delta stored, dQ rotated back and stored as e5m2 by _store8)."""
  ROW: tl.constexpr = H * D
  base = tl.cast(bh // H, tl.int64) * T * ROW + (bh % H) * D
  base3 = tl.cast(bh // H, tl.int64) * T * 3 * ROW + (bh % H) * D
  dq = tk._dq_block(Q, K, QKV + base3 + 2 * ROW, O, DO, LSE, DELTA, base, bh, start_m, SM_SCALE, T, ROW,  # pylint: disable=protected-access
                    3 * ROW, D, BLOCK_M, BLOCK_N, True)
  offs_m = start_m + tl.arange(0, BLOCK_M)
  cos, sin = tk._rope_tile(COS, SIN, offs_m, T, D)  # pylint: disable=protected-access
  _store8(DQKV, DQKV_T, g, tk._unrotate(dq, cos, sin, BLOCK_M, D), bh // H, bh % H, 0, offs_m, B, T, H, D)  # pylint: disable=protected-access


@triton.jit
def dq8_persist_kernel(Q, K, QKV, O, DO, LSE, COS, SIN, G, DELTA, DQKV, DQKV_T, SM_SCALE: tl.constexpr,
                       B: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, HEAD_MAJOR: tl.constexpr):
  """attention_kernel_triton.bwd_dq_rope_fp8_kernel over tiles program_id, program_id + P, ..."""
  NB: tl.constexpr = T // BLOCK_M
  g = tl.load(G)
  for tile in tl.range(tl.program_id(0), NB * B * H, tl.num_programs(0), num_stages=1):
    block, bh = _tile(tile, NB, B * H, True, HEAD_MAJOR)
    dq8_tile(Q, K, QKV, O, DO, LSE, COS, SIN, g, DELTA, DQKV, DQKV_T, bh, block * BLOCK_M, SM_SCALE, B, T, H, D,
             BLOCK_M, BLOCK_N)


@triton.jit
def dkdv8_persist_kernel(Q, K, QKV, DO, LSE, DELTA, COS, SIN, G, DQKV_IN, DQKV_T_IN, DQKV, DQKV_T,
                         SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_MAJOR: tl.constexpr):
  """attention_kernel_triton.bwd_dkdv_rope_fp8_kernel (aliased in place the same way) over tiles
  program_id, program_id + P, ..."""
  ROW: tl.constexpr = H * D
  NB: tl.constexpr = T // BLOCK_N
  g = tl.load(G)
  offs_d = tl.arange(0, D)
  for tile in tl.range(tl.program_id(0), NB * B * H, tl.num_programs(0), num_stages=1):
    block, bh = _tile(tile, NB, B * H, False, HEAD_MAJOR)
    start_n = block * BLOCK_N
    base = tl.cast(bh // H, tl.int64) * T * ROW + (bh % H) * D
    base3 = tl.cast(bh // H, tl.int64) * T * 3 * ROW + (bh % H) * D
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = tl.load(K + base + offs_n[:, None] * ROW + offs_d[None, :])
    v = tl.load(QKV + 2 * ROW + base3 + offs_n[:, None] * (3 * ROW) + offs_d[None, :])
    dk, dv = tk._dkdv_block(Q, k, v, DO, LSE, DELTA, base, bh, start_n, SM_SCALE, T, ROW, D, BLOCK_M, BLOCK_N,  # pylint: disable=protected-access
                            True)
    cos, sin = tk._rope_tile(COS, SIN, offs_n, T, D)  # pylint: disable=protected-access
    _store8(DQKV, DQKV_T, g, tk._unrotate(dk, cos, sin, BLOCK_N, D), bh // H, bh % H, 1, offs_n, B, T, H, D)  # pylint: disable=protected-access
    _store8(DQKV, DQKV_T, g, dv, bh // H, bh % H, 2, offs_n, B, T, H, D)


@triton.jit
def fwd_persist_tma_kernel(Q, K, QKV, O, LSE, SM_SCALE: tl.constexpr, B: tl.constexpr, T: tl.constexpr,
                           H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           WS: tl.constexpr):
  """dev_tma_attention.fwd_tma_kernel with its three descriptors made once a program, its tiles dealt
  as fwd_persist_kernel's."""
  ROW: tl.constexpr = H * D
  NB: tl.constexpr = T // BLOCK_M
  q_desc = tma._tiles(Q, B, T, H, D, BLOCK_M, ROW)  # pylint: disable=protected-access
  k_desc = tma._tiles(K, B, T, H, D, BLOCK_N, ROW)  # pylint: disable=protected-access
  v_desc = tma._tiles(QKV + 2 * ROW, B, T, H, D, BLOCK_N, 3 * ROW)  # pylint: disable=protected-access
  o_desc = tma._tiles(O, B, T, H, D, BLOCK_M, ROW)  # pylint: disable=protected-access
  for tile in tl.range(tl.program_id(0), NB * B * H, tl.num_programs(0), num_stages=1):
    block, bh = _tile(tile, NB, B * H, True, False)
    tma._fwd_tma_tile(q_desc, k_desc, v_desc, o_desc, LSE, bh, (bh // H) * T, (bh % H) * D, block * BLOCK_M, SM_SCALE,  # pylint: disable=protected-access
                      T, D, BLOCK_M, BLOCK_N, WS)


# The TMA kernel goes through dev_tma_attention's compile and scratch machinery under the part "pfwd".
tma.KERNELS["pfwd"] = (fwd_persist_tma_kernel, ["*bf16"] * 4 + ["*fp32"])
tma.VARIANTS["pfwd"] = {"tma": (64, 32, 4, 3, False), "tma_ws": (64, 32, 4, 3, True)}

# ptr variants: name -> (registers cap or None, programs an SM per part, head-major deal). The persistent loop costs
# registers (96 / 122 / 184 a thread for fwd / dq / dk-dv against the tree's 72 / 78 / 116, by
# --compile_only), which cuts how many programs an SM holds; "c" caps them at the tree's occupancy
# (ptxas maxnreg), and "c2" deals the tiles over twice as many programs as fit at once. The first
# three deal level-major: 35-50% slower than the tree (forty-seventh session), K and V of 2,048 heads
# (64 MiB) outgrowing L2 between a head's levels; "h" deals head-major.
PTR = {"ptr": (None, {"fwd": 5, "dq": 4, "dkdv": 2}, False),
       "ptrc": (True, {"fwd": 7, "dq": 6, "dkdv": 4}, False),
       "ptrc2": (True, {"fwd": 14, "dq": 12, "dkdv": 8}, False),
       "ptrh": (None, {"fwd": 4, "dq": 4, "dkdv": 2}, True),
       "ptrhc": (True, {"fwd": 7, "dq": 6, "dkdv": 4}, True),
       "ptrhc2": (True, {"fwd": 14, "dq": 12, "dkdv": 8}, True)}
CAPS = {"fwd": 72, "dq": 80, "dkdv": 128}   # registers for 7 / 6 / 4 programs of 4 warps an SM
TMA = {"tma4": ("tma", 4), "tma8": ("tma", 8), "tma_ws2": ("tma_ws", 2), "tma_ws4": ("tma_ws", 4)}
_CAPPED = {}   # (kernel, cap) -> a JITFunction of the same code; its id -> the cap (enable_maxnreg)


def _capped(kernel, cap):
  """The kernel as its own JITFunction to be compiled with a register cap: jax-triton compiles a
  kernel when the step is lowered, long after triton_call, and keys its cache on the function."""
  if cap is None:
    return kernel
  if (kernel, cap) not in _CAPPED:
    _CAPPED[kernel, cap] = triton.jit(kernel.fn)
    _CAPPED[id(_CAPPED[kernel, cap])] = cap
  return _CAPPED[kernel, cap]


def enable_maxnreg():
  """Patches jax-triton (idempotent) so that a kernel made by _capped compiles with its register cap
  (Triton's maxnreg option; jax-triton 0.3.1 has no argument for it)."""
  from jax_triton import triton_lib  # pylint: disable=import-outside-toplevel
  if getattr(triton_lib, "_maxnreg_patched", False):
    return
  original = triton_lib.get_or_create_triton_kernel

  def get_or_create(backend_init_func, platform, fn, *args, **kwargs):
    cap = _CAPPED.get(id(fn))

    def init(*a):
      backend = backend_init_func(*a)
      if cap is not None:
        parse = backend.parse_options
        backend.parse_options = lambda opts: parse({**opts, "maxnreg": cap})
      return backend
    return original(init, platform, fn, *args, **kwargs)

  triton_lib.get_or_create_triton_kernel = get_or_create
  triton_lib._maxnreg_patched = True  # pylint: disable=protected-access


def _ptr_call(name, part, *args, kernel, **kwargs):
  """jax_triton.triton_call of a ptr kernel for `part` with the variant's grid and register cap."""
  import jax_triton as jt  # pylint: disable=import-outside-toplevel
  cap, per_sm, head_major = PTR[name]
  return jt.triton_call(*args, kernel=_capped(kernel, CAPS[part] if cap else None), grid=(SMS * per_sm[part],),
                        HEAD_MAJOR=head_major, **kwargs)


def _ptr_consts(t, d, b, h, part):
  import attention_kernel  # pylint: disable=import-outside-toplevel
  bm, bn, warps, stages = attention_kernel.block_config(t, d)[{"fwd": 0, "dkdv": 1, "dq": 2}[part]]
  return dict(SM_SCALE=d ** -0.5, B=b, T=t, H=h, D=d, BLOCK_M=bm, BLOCK_N=bn), warps, stages


def forward(name, q_BTHK, k_BTHK, qkv_BT3HK):
  """(O, LSE) of the causal forward with V in the packed projection, by the persistent variant name."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  b, t, h, d = q_BTHK.shape
  outs = (jax.ShapeDtypeStruct(q_BTHK.shape, q_BTHK.dtype), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
  if name in TMA:
    variant, per_sm = TMA[name]
    return tma.scratch_call("pfwd", variant, (q_BTHK, k_BTHK, qkv_BT3HK), outs, (SMS * per_sm, 1))
  consts, warps, stages = _ptr_consts(t, d, b, h, "fwd")
  return _ptr_call(name, "fwd", q_BTHK, k_BTHK, qkv_BT3HK, kernel=fwd_persist_kernel, out_shape=outs,
                   num_warps=warps, num_stages=stages, **consts)


def dqkv8(name, res, do_BTHK, g, sm_scale):
  """attention_kernel._dqkv8 (kernels=True) with the persistent ptr kernels."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  qkv_BT3HK, q_BTHK, k_BTHK, cos_TK, sin_TK, o_BTHK, lse_BHT = res
  b, t, h, d = q_BTHK.shape
  assert abs(sm_scale - d ** -0.5) < 1e-12, sm_scale
  do_BTHK = do_BTHK.astype(q_BTHK.dtype)
  out = (jax.ShapeDtypeStruct(qkv_BT3HK.shape, jnp.float8_e5m2), jax.ShapeDtypeStruct((3 * h * d, b * t), jnp.float8_e5m2))
  consts, warps, stages = _ptr_consts(t, d, b, h, "dq")
  delta, d8, d8t = _ptr_call(name, "dq", q_BTHK, k_BTHK, qkv_BT3HK, o_BTHK, do_BTHK, lse_BHT, cos_TK, sin_TK, g,
                             kernel=dq8_persist_kernel, out_shape=(jax.ShapeDtypeStruct((b, h, t), jnp.float32), *out),
                             num_warps=warps, num_stages=stages, **consts)
  ins = (q_BTHK, k_BTHK, qkv_BT3HK, do_BTHK, lse_BHT, delta, cos_TK, sin_TK, g, d8, d8t)
  consts, warps, stages = _ptr_consts(t, d, b, h, "dkdv")
  d8, d8t = _ptr_call(name, "dkdv", *ins, kernel=dkdv8_persist_kernel, out_shape=out,
                      input_output_aliases={9: 0, 10: 1}, num_warps=warps, num_stages=stages, **consts)
  return d8.reshape(b * t, -1), d8t


def install_step(name="ptrhc"):
  """The speedrun step with the persistent ptr kernels (for bench/dev_step_variants.sh): the packed
  forward and the FP8 backward (dev_tma_attention.install); anything else stays on the tree's."""
  enable_maxnreg()
  tma.install(lambda q, k, qkv: forward(name, q, k, qkv), lambda *a: dqkv8(name, *a))


def _compile(kernel, dtypes, consts, warps, stages, maxnreg=None):
  from triton.backends.compiler import GPUTarget  # pylint: disable=import-outside-toplevel
  from triton.compiler import ASTSource  # pylint: disable=import-outside-toplevel
  signature = dict(zip(kernel.arg_names, dtypes))
  signature.update({n: "constexpr" for n in consts})
  src = ASTSource(kernel, signature, constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in range(len(dtypes))})
  return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages,
                                                                             **({"maxnreg": maxnreg} if maxnreg else {})})


def _registers(cubin):
  """(registers a thread, stack bytes) of a cubin's kernel, from cuobjdump's resource usage."""
  import re  # pylint: disable=import-outside-toplevel
  import dev_sass_mix  # pylint: disable=import-outside-toplevel
  text = dev_sass_mix.cuobjdump(cubin, "-res-usage")
  return int(re.search(r"REG:(\d+)", text).group(1)), int(re.search(r"STACK:(\d+)", text).group(1))


def interpret():
  """The ptr kernels in Triton's CPU interpreter (TRITON_INTERPRET=1, torch, float16) against the
  tree's kernels on the same inputs, with a grid that does not divide the tiles: the same bytes."""
  b, t, h, d = 2, 128, 3, 32
  x = tma.interpret_inputs(b, t, h, d)
  qkv, q, k, do, cos, sin, g = (x[n] for n in ("qkv", "q", "k", "do", "cos", "sin", "g"))
  for head_major in (False, True):
    _interpret_order(q, k, qkv, do, cos, sin, g, b, t, h, d, head_major)


def _interpret_order(q, k, qkv, do, cos, sin, g, b, t, h, d, head_major):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  c = dict(SM_SCALE=d ** -0.5, T=t, H=h, D=d)
  fwd = {}
  for name in ("tree", "ptr"):
    o, lse = torch.empty_like(q), torch.empty((b, h, t))
    if name == "tree":
      tk.fwd_kernel[(t // 64, b * h)](q, k, qkv, o, lse, BLOCK_M=64, BLOCK_N=32, CAUSAL=True, V_ROW=3 * h * d,
                                      V_OFF=2 * h * d, **c)
    else:
      fwd_persist_kernel[(5,)](q, k, qkv, o, lse, B=b, HEAD_MAJOR=head_major, BLOCK_M=64, BLOCK_N=32, **c)
    fwd[name] = (o, lse)
  same = [torch.equal(x, y) for x, y in zip(fwd["ptr"], fwd["tree"])]
  print(f"fwd  ptr head-major {head_major} interpreter, float16: O and LSE the same as the tree's: {same}")
  assert all(same)
  o, lse = fwd["tree"]
  outs = {"tree": tma.tree_bwd8_interpret(q, k, qkv, o, do, lse, cos, sin, g)}
  delta = torch.empty((b, h, t))
  d8, d8t = torch.zeros_like(qkv, dtype=torch.float8_e5m2), torch.zeros((3 * h * d, b * t), dtype=torch.float8_e5m2)
  dq8_persist_kernel[(5,)](q, k, qkv, o, do, lse, cos, sin, g, delta, d8, d8t, B=b, HEAD_MAJOR=head_major, BLOCK_M=64,
                           BLOCK_N=32, **c)
  dkdv8_persist_kernel[(7,)](q, k, qkv, do, lse, delta, cos, sin, g, d8, d8t, d8, d8t, B=b, HEAD_MAJOR=head_major,
                             BLOCK_M=32, BLOCK_N=64, **c)
  outs["ptr"] = (delta, d8, d8t)
  outs = {n: tuple(x.float() for x in xs) for n, xs in outs.items()}
  assert all(np.count_nonzero(x.numpy()) > 0.9 * x.numel() for x in outs["tree"])   # every part written
  same = [torch.equal(x, y) for x, y in zip(outs["ptr"], outs["tree"])]
  print(f"bwd8 ptr head-major {head_major} interpreter, float16 in, e5m2 out: delta, packed and token-last dQKV the same as the tree's: {same}")
  assert all(same)


def check_lowering():
  """CPU: the speedrun step with install_step('ptrc') lowered whole through jax-triton (a stand-in for
  jaxlib's GPU library, bench/dev_tma_attention.cpu_stand_in): the three persistent kernels replace
  the tree's, on grids of programs-an-SM x 132, their PTX capped at CAPS; the uncapped variant's not."""
  import importlib  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  made, launches = tma.cpu_stand_in()
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import errors  # pylint: disable=import-outside-toplevel
  import jax_triton  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel
  from configs import tinystories_h100  # pylint: disable=import-outside-toplevel
  monkeypatch = pytest.MonkeyPatch()   # the product's kernels refuse a CPU backend: let them lower here
  monkeypatch.setattr(errors, "triton_kernels", lambda name, option, section="model": (jax_triton, importlib.import_module(name)))
  monkeypatch.setattr(attention_kernel, "_triton", lambda: (jax_triton, tk))
  config = tinystories_h100.get_config()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  state = jax.eval_shape(lambda key: train._init_state(config, key), jax.random.key(0))  # pylint: disable=protected-access
  tree = {"fwd_kernel", "bwd_dq_rope_fp8_kernel", "bwd_dkdv_rope_fp8_kernel"}
  ours = {"fwd_persist_kernel": "fwd", "dq8_persist_kernel": "dq", "dkdv8_persist_kernel": "dkdv"}
  for name in ("ptrc", "ptr"):
    forward_tree, dqkv8_tree = attention_kernel._forward, attention_kernel._dqkv8  # pylint: disable=protected-access
    install_step(name)
    before, made_before = len(launches), len(made)
    train.make_train_step(config, mesh, on_device=True).lower(state, jax.ShapeDtypeStruct((1_000_000,), np.uint16))
    attention_kernel._forward, attention_kernel._dqkv8 = forward_tree, dqkv8_tree  # pylint: disable=protected-access
    grids = {launch.kernel[0]: launch.grid for launch in launches[before:]}
    ptx = {kernel[0]: kernel[4] for kernel in made[made_before:]}
    assert not tree & set(grids) and set(ours) <= set(grids), sorted(grids)
    cap, per_sm, _ = PTR[name]
    for kernel, part in ours.items():
      got = re.search(r"\.maxnreg (\d+)", ptx[kernel])
      print(f"{name:5s} {kernel:21s} grid {grids[kernel]}, PTX register cap {got and int(got.group(1))}")
      assert grids[kernel] == (SMS * per_sm[part], 1, 1), grids[kernel]
      assert (got and int(got.group(1))) == (CAPS[part] if cap else None)
    print(f"{name:5s} the step: {len(grids)} kernels, the tree's attention kernels out")


def compile_only():
  """Registers, shared memory and the programs an SM can hold (by registers and by shared) per kernel."""
  b, t, h, d = 128, 256, 16, 32
  rows = [("fwd tree", tk.fwd_kernel, ["*bf16"] * 4 + ["*fp32"], "fwd", dict(CAUSAL=True, V_ROW=3 * h * d, V_OFF=2 * h * d), True),
          ("fwd ptr", fwd_persist_kernel, ["*bf16"] * 4 + ["*fp32"], "fwd", dict(HEAD_MAJOR=True), False),
          ("dq8 tree", tk.bwd_dq_rope_fp8_kernel, ["*bf16"] * 5 + ["*fp32"] * 5 + ["*fp8e5"] * 2, "dq", dict(CAUSAL=True), True),
          ("dq8 ptr", dq8_persist_kernel, ["*bf16"] * 5 + ["*fp32"] * 5 + ["*fp8e5"] * 2, "dq", dict(HEAD_MAJOR=True), False),
          ("dkdv8 tree", tk.bwd_dkdv_rope_fp8_kernel, ["*bf16"] * 4 + ["*fp32"] * 5 + ["*fp8e5"] * 4, "dkdv", dict(CAUSAL=True), True),
          ("dkdv8 ptr", dkdv8_persist_kernel, ["*bf16"] * 4 + ["*fp32"] * 5 + ["*fp8e5"] * 4, "dkdv", dict(HEAD_MAJOR=True), False)]
  for label, kernel, dtypes, part, extra, tree in rows:
    consts, warps, stages = _ptr_consts(t, d, b, h, part)
    if tree:
      del consts["B"]
    for cap in (None,) if tree else (None, CAPS[part]):
      m = _compile(kernel, dtypes, {**consts, **extra}, warps, stages, cap)
      regs, stack = _registers(m.asm["cubin"])
      by_regs = 65536 // (regs * 32 * m.metadata.num_warps)
      by_shared = 232448 // max(1, m.metadata.shared)
      print(f"{label:11s} {warps} warps, {stages} stages, cap {cap}: {regs} registers, {stack} B stack, "
            f"{m.metadata.shared} B shared -> {min(by_regs, by_shared, 32)} programs an SM (registers {by_regs}, "
            f"shared {by_shared})")
  for variant in tma.VARIANTS["pfwd"]:
    try:
      m = tma.compile_sm90("pfwd", variant, b, t, h, d)
      print(f"pfwd {variant:7s}: {m.metadata.num_warps} warps, {_registers(m.asm['cubin'])[0]} registers, {m.metadata.shared} B shared, "
            f"{m.metadata.global_scratch_size} B scratch a program")
    except Exception as e:  # pylint: disable=broad-except
      print(f"pfwd {variant:7s}: compile failed: {type(e).__name__}: {str(e)[:300]}")


def main():
  args = tma.command_line(__doc__, ",".join(PTR), {   # --variants: any of PTR and TMA
      "compile_only": ("CPU: registers, shared, occupancy", compile_only),
      "interpret": ("TRITON_INTERPRET=1 with torch: the ptr kernels' values", interpret),
      "check_lowering": ("CPU: the step lowered with the ptr kernels", check_lowering)})
  if args is None:
    return
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import dev_memory_kernels as dmk  # pylint: disable=import-outside-toplevel
  tma.enable()
  enable_maxnreg()
  x = tma.speedrun_inputs()
  d, cfg = x["d"], x["cfg"]
  cases = {
      "fwd": ((x["q"], x["k"], x["qkv"]), {"tree": lambda q, k, qkv: attention_kernel._forward(q, k, qkv, True, d ** -0.5, cfg, packed_v=True)}),  # pylint: disable=protected-access
      "bwd8": ((x["res"], x["do"], x["g"]), {"tree": lambda r, dy, g: attention_kernel._dqkv8(r, dy, g, d ** -0.5, True)}),  # pylint: disable=protected-access
  }
  for name in args.variants.split(","):
    cases["fwd"][1][name] = lambda q, k, qkv, name=name: forward(name, q, k, qkv)
    if name in PTR:
      cases["bwd8"][1][name] = lambda r, dy, g, name=name: dqkv8(name, r, dy, g, d ** -0.5)
  result = {**dmk.header("bench/dev_persistent_attention.py"), "sms": SMS, "ptr": PTR, "tma": TMA}
  # ptr: the tree's code a tile, so the same bits; tma: within bf16 rounding (its own loop)
  tma.check_and_time(cases, args.rounds, result, lambda part, name: (2e-2, 1.0 if name in PTR else 0.0))
  dmk.write_json(result, args.out or os.path.join(ROOT, "bench", "results", "persistent_attention.json"))


if __name__ == "__main__":
  main()
