"""Dev (GPU; --compile_only and --interpret on a CPU): the step's FP8 attention backward (dQ and dK/dV)
as one kernel launch against the tree's two, at the speedrun shape.

Why. The tree runs the dQ kernel, then the dK/dV kernel (bwd_dq_rope_fp8_kernel makes delta =
rowsum(O dO), which bwd_dkdv_rope_fp8_kernel reads). Both are latency-bound (a program issues a third
to a half of its instructions outside its key loop: bench/dev_sass_mix.py), and each ends in a tail
where the last wave drains and SMs idle. Here the dK/dV programs make delta themselves from O and dO
tiles (one more 32 x 32 load a trip), so nothing orders the two kinds of program, and one grid holds
both: the dK/dV tiles first (the heavier), then the dQ tiles, each in the tree's order. The catch: one
kernel has one register allocation, the larger of the two, so the dQ programs lose occupancy
(--compile_only prints it). Variants: `one3`/`one4` (3 or 4 pipeline stages), `dqfirst` (the dQ tiles
first).

  python bench/dev_bwd_one_launch.py --compile_only                       # CPU: registers, occupancy
  TRITON_INTERPRET=1 python bench/dev_bwd_one_launch.py --interpret       # CPU with torch: the values
  python bench/dev_bwd_one_launch.py --rounds=3 --out=F                   # GPU: check, then time

Nothing here is in the product.
"""
import os
import sys

import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import attention_kernel_triton as tk  # pylint: disable=wrong-import-position
import dev_persistent_attention as dpa  # pylint: disable=wrong-import-position

# name -> (num_stages, dK/dV tiles first, register cap or None: 96 fits 5 programs an SM, not 4)
VARIANTS = {"one3": (3, True, None), "one4": (4, True, None), "dqfirst": (3, False, None), "one3c96": (3, True, 96)}


@triton.jit
def _dkdv_inner_delta(dk, dv, k, v, q_ptrs, do_ptrs, o_ptrs, lse_ptr, offs_n, lo, hi, qk_scale,
                      ROW: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr):
  """attention_kernel_triton._dkdv_inner (T a multiple of BLOCK_M) with delta = rowsum(O dO) made
  from the trip's O and dO tiles instead of loaded."""
  for start_m in range(lo, hi, BLOCK_M):
    start_m = tl.multiple_of(start_m, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = tl.load(q_ptrs + start_m * ROW)
    lse = tl.load(lse_ptr + offs_m)
    p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
    if MASKED:
      p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
    do = tl.load(do_ptrs + start_m * ROW)
    dv = tl.dot(p_t.to(do.dtype), do, dv)
    o = tl.load(o_ptrs + start_m * ROW)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk)
  return dk, dv


@triton.jit
def _dkdv_tile(Q, K, QKV, O, DO, LSE, COS, SIN, g, DQKV, DQKV_T, bh, start_n, SM_SCALE: tl.constexpr,
               B: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
  """bwd_dkdv_rope_fp8_kernel's work for the BLOCK_N keys at start_n of head bh, delta made here."""
  ROW: tl.constexpr = H * D
  base = (bh // H).to(tl.int64) * T * ROW + (bh % H) * D
  base3 = (bh // H).to(tl.int64) * T * 3 * ROW + (bh % H) * D
  offs_n = start_n + tl.arange(0, BLOCK_N)
  offs_m = tl.arange(0, BLOCK_M)
  offs_d = tl.arange(0, D)
  k = tl.load(K + base + offs_n[:, None] * ROW + offs_d[None, :])
  v = tl.load(QKV + 2 * ROW + base3 + offs_n[:, None] * (3 * ROW) + offs_d[None, :])
  rows = base + offs_m[:, None] * ROW + offs_d[None, :]
  dk = tl.zeros([BLOCK_N, D], tl.float32)
  dv = tl.zeros([BLOCK_N, D], tl.float32)
  qk_scale = SM_SCALE * 1.4426950408889634
  lo = start_n + BLOCK_N   # queries before start_n never see these keys; the diagonal block is masked
  dk, dv = _dkdv_inner_delta(dk, dv, k, v, Q + rows, DO + rows, O + rows, LSE + bh * T, offs_n, start_n,
                             tl.minimum(lo, T), qk_scale, ROW, BLOCK_M, True)
  dk, dv = _dkdv_inner_delta(dk, dv, k, v, Q + rows, DO + rows, O + rows, LSE + bh * T, offs_n, lo, T,
                             qk_scale, ROW, BLOCK_M, False)
  cos, sin = tk._rope_tile(COS, SIN, offs_n, T, D)  # pylint: disable=protected-access
  dpa._store8(DQKV, DQKV_T, g, tk._unrotate(dk * SM_SCALE, cos, sin, BLOCK_N, D), bh // H, bh % H, 1, offs_n,  # pylint: disable=protected-access
              B, T, H, D)
  dpa._store8(DQKV, DQKV_T, g, dv, bh // H, bh % H, 2, offs_n, B, T, H, D)  # pylint: disable=protected-access


@triton.jit
def bwd8_one_kernel(Q, K, QKV, O, DO, LSE, COS, SIN, G, DELTA, DQKV, DQKV_T, SM_SCALE: tl.constexpr,
                    B: tl.constexpr, T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, BM_Q: tl.constexpr,
                    BN_Q: tl.constexpr, BM_K: tl.constexpr, BN_K: tl.constexpr, DKDV_FIRST: tl.constexpr):
  """One program: a dK/dV tile or a dQ tile of the FP8 backward (e5m2(dQKV G[0]) into the packed DQKV
  [B, T, 3, H, D] and the token-last DQKV_T [3 H D, B T]; DELTA as the tree's dQ kernel stores it).
  Within each kind the tree's grid order: a head's blocks in a row, dQ's heaviest first."""
  NK: tl.constexpr = T // BN_K
  NQ: tl.constexpr = T // BM_Q
  pid = tl.program_id(0)
  g = tl.load(G)
  if DKDV_FIRST:
    is_dkdv = pid < NK * B * H
    i = tl.where(is_dkdv, pid, pid - NK * B * H)
  else:
    is_dkdv = pid >= NQ * B * H
    i = tl.where(is_dkdv, pid - NQ * B * H, pid)
  if is_dkdv:
    _dkdv_tile(Q, K, QKV, O, DO, LSE, COS, SIN, g, DQKV, DQKV_T, i // NK, (i % NK) * BN_K, SM_SCALE, B, T, H, D,
               BM_K, BN_K)
  else:
    dpa.dq8_tile(Q, K, QKV, O, DO, LSE, COS, SIN, g, DELTA, DQKV, DQKV_T, i // NQ, (NQ - 1 - i % NQ) * BM_Q, SM_SCALE,
                 B, T, H, D, BM_Q, BN_Q)


def _consts(name, b, t, h, d):
  import attention_kernel  # pylint: disable=import-outside-toplevel
  config = attention_kernel.block_config(t, d)
  (bm_k, bn_k), (bm_q, bn_q) = config[1][:2], config[2][:2]
  stages, first, _ = VARIANTS[name]
  return dict(SM_SCALE=d ** -0.5, B=b, T=t, H=h, D=d, BM_Q=bm_q, BN_Q=bn_q, BM_K=bm_k, BN_K=bn_k,
              DKDV_FIRST=first), stages


def dqkv8(name, res, do_BTHK, g, sm_scale):
  """attention_kernel._dqkv8 (kernels=True) in one launch of bwd8_one_kernel."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import jax_triton as jt  # pylint: disable=import-outside-toplevel
  qkv_BT3HK, q_BTHK, k_BTHK, cos_TK, sin_TK, o_BTHK, lse_BHT = res
  b, t, h, d = q_BTHK.shape
  assert abs(sm_scale - d ** -0.5) < 1e-12, sm_scale
  consts, stages = _consts(name, b, t, h, d)
  out = (jax.ShapeDtypeStruct((b, h, t), jnp.float32), jax.ShapeDtypeStruct(qkv_BT3HK.shape, jnp.float8_e5m2),
         jax.ShapeDtypeStruct((3 * h * d, b * t), jnp.float8_e5m2))
  grid = (t // consts["BN_K"] + t // consts["BM_Q"]) * b * h
  _, d8, d8t = jt.triton_call(q_BTHK, k_BTHK, qkv_BT3HK, o_BTHK, do_BTHK.astype(q_BTHK.dtype), lse_BHT, cos_TK,
                              sin_TK, g, kernel=dpa._capped(bwd8_one_kernel, VARIANTS[name][2]),  # pylint: disable=protected-access
                              out_shape=out, grid=(grid,), num_warps=4,
                              num_stages=stages, **consts)
  return d8.reshape(b * t, -1), d8t


def install_step(name="one3"):
  """The speedrun step with the one-launch FP8 backward (for bench/dev_step_variants.sh)."""
  import attention_kernel  # pylint: disable=import-outside-toplevel
  dqkv8_tree = attention_kernel._dqkv8  # pylint: disable=protected-access
  dpa.enable_maxnreg()

  def dqkv8_one(res, do, g, sm_scale, kernels):
    return dqkv8(name, res, do, g, sm_scale) if kernels else dqkv8_tree(res, do, g, sm_scale, kernels)

  attention_kernel._dqkv8 = dqkv8_one  # pylint: disable=protected-access


def interpret():
  """bwd8_one_kernel in Triton's CPU interpreter (torch, float16) against the tree's two kernels on
  the same inputs: the same e5m2 bytes, or at most a few elements a rounding step apart (delta summed
  in another order)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  b, t, h, d = 2, 128, 3, 32
  x = dpa.tma.interpret_inputs(b, t, h, d)
  qkv, q, k, do, cos, sin, g = (x[n] for n in ("qkv", "q", "k", "do", "cos", "sin", "g"))
  c = dict(SM_SCALE=d ** -0.5, T=t, H=h, D=d)
  o, lse = torch.empty_like(q), torch.empty((b, h, t))
  tk.fwd_kernel[(t // 64, b * h)](q, k, qkv, o, lse, BLOCK_M=64, BLOCK_N=32, CAUSAL=True, V_ROW=3 * h * d,
                                  V_OFF=2 * h * d, **c)
  outs = {"tree": dpa.tma.tree_bwd8_interpret(q, k, qkv, o, do, lse, cos, sin, g)}
  for first in (True, False):
    delta = torch.empty((b, h, t))
    d8, d8t = torch.zeros_like(qkv, dtype=torch.float8_e5m2), torch.zeros((3 * h * d, b * t), dtype=torch.float8_e5m2)
    bwd8_one_kernel[((t // 64 + t // 64) * b * h,)](q, k, qkv, o, do, lse, cos, sin, g, delta, d8, d8t, B=b, BM_Q=64,
                                                   BN_Q=32, BM_K=32, BN_K=64, DKDV_FIRST=first, **c)
    outs[first] = (delta, d8, d8t)
  outs = {n: tuple(x.float() for x in xs) for n, xs in outs.items()}
  assert all(np.count_nonzero(x.numpy()) > 0.9 * x.numel() for x in outs["tree"])   # every part written
  for first in (True, False):
    same = [float((x == y).float().mean()) for x, y in zip(outs[first], outs["tree"])]
    print(f"one launch (dK/dV first {first}) interpreter, float16 in, e5m2 out: share of delta, packed and "
          f"token-last dQKV equal to the tree's: {same}")
    assert same[0] == 1.0 and min(same[1:]) > 0.999, same


def compile_only():
  b, t, h, d = 128, 256, 16, 32
  dtypes = ["*bf16"] * 6 + ["*fp32"] * 4 + ["*fp8e5"] * 2
  for name in VARIANTS:
    consts, stages = _consts(name, b, t, h, d)
    m = dpa._compile(bwd8_one_kernel, dtypes, consts, 4, stages, VARIANTS[name][2])  # pylint: disable=protected-access
    regs, stack = dpa._registers(m.asm["cubin"])  # pylint: disable=protected-access
    print(f"{name:8s} {stages} stages: {regs} registers, {stack} B stack, {m.metadata.shared} B shared -> "
          f"{min(65536 // (regs * 128), 232448 // m.metadata.shared)} programs an SM")


def main():
  import dev_tma_attention as tma  # pylint: disable=import-outside-toplevel
  args = tma.command_line(__doc__, ",".join(VARIANTS), {
      "compile_only": ("CPU: registers, occupancy", compile_only),
      "interpret": ("TRITON_INTERPRET=1 with torch: the values against the tree's kernels", interpret)})
  if args is None:
    return
  import attention_kernel  # pylint: disable=import-outside-toplevel
  import dev_memory_kernels as dmk  # pylint: disable=import-outside-toplevel
  x = tma.speedrun_inputs()
  d = x["d"]
  dpa.enable_maxnreg()
  fns = {"tree": lambda r, dy, g: attention_kernel._dqkv8(r, dy, g, d ** -0.5, True)}  # pylint: disable=protected-access
  for name in args.variants.split(","):
    fns[name] = lambda r, dy, g, name=name: dqkv8(name, r, dy, g, d ** -0.5)
  result = {**dmk.header("bench/dev_bwd_one_launch.py"), "variants": VARIANTS}
  # e5m2: an element rounded the other way (delta summed in another layout) moves by a quarter of the max
  tma.check_and_time({"bwd8": ((x["res"], x["do"], x["g"]), fns)}, args.rounds, result, lambda part, name: (0.26, 0.999))
  dmk.write_json(result, args.out or os.path.join(ROOT, "bench", "results", "bwd_one_launch.json"))


if __name__ == "__main__":
  main()
