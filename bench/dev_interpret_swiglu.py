"""Dev check (not the product): runs swiglu_kernel_triton.py's kernels in Triton's CPU interpreter on
torch tensors against NumPy float64: the backward's two gate gradients (the derivative of
silu(g) * u written out, and a central finite difference of it as a second reference), and the two
matmul kernels with the activation in their epilogues (X @ W13 with silu(gate) * up; DY @ W2^T with
the gate gradients), at ragged rows, columns and inner dimensions.

  TRITON_INTERPRET=1 python bench/dev_interpret_swiglu.py

tests/test_swiglu_kernel.py checks the jax-triton side (custom VJP, the model path) on a GPU.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import torch

import swiglu_kernel
import swiglu_kernel_triton as K


def main():
  worst = 0.0
  # F a multiple of the block, ragged F and ragged rows.
  for n, f in [(5, 64), (70, 128), (9, 100), (3, 1344)]:
    rng = np.random.default_rng(n * f)
    h13 = torch.from_numpy((rng.standard_normal((n, 2 * f)) * 3).astype(np.float32)).to(torch.float16)
    da = torch.from_numpy(rng.standard_normal((n, f)).astype(np.float32)).to(torch.float16)
    dh13 = torch.full((n, 2 * f), float("nan"), dtype=torch.float16)
    br, bf = swiglu_kernel.BLOCK_R, swiglu_kernel.BLOCK_F
    K.swiglu_bwd_kernel[(-(-n // br), -(-f // bf))](h13, da, dh13, N=n, F=f, BLOCK_R=br, BLOCK_F=bf)
    g, u = h13.double().numpy()[:, :f], h13.double().numpy()[:, f:]
    a = da.double().numpy()
    act = lambda g, u: g / (1 + np.exp(-g)) * u  # pylint: disable=unnecessary-lambda-assignment
    eps = 1e-6
    ref_dg = a * (act(g + eps, u) - act(g - eps, u)) / (2 * eps)
    ref_du = a * g / (1 + np.exp(-g))
    got = dh13.double().numpy()
    assert not np.isnan(got).any(), "every element must be written"
    errs = [np.abs(got[:, :f] - ref_dg).max() / np.abs(ref_dg).max(),
            np.abs(got[:, f:] - ref_du).max() / np.abs(ref_du).max()]
    worst = max(worst, *errs)
    print(f"N={n} F={f}: dgate rel err {errs[0]:.1e}, dup rel err {errs[1]:.1e}", flush=True)
  worst = max(worst, fused_matmuls())
  print(f"worst error {worst:.2e}")
  assert worst < 2e-3, worst   # fp16 outputs: ~5e-4 relative


def _silu(g):
  return g / (1 + np.exp(-g))


def fused_matmuls():
  """The up kernel (X @ W13 -> H13, silu(gate) * up) and the down-backward kernel (DY @ W2^T -> both
  gate gradients); worst relative error against float64 NumPy on the same fp16 inputs."""
  worst = 0.0
  # (N, D, F, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M): whole blocks, then ragged N, F and D (D % BLOCK_K).
  for n, d, f, bm, bn, bk, gm in [(64, 64, 64, 32, 32, 32, 2), (70, 48, 100, 32, 32, 32, 4),
                                  (33, 80, 40, 16, 32, 32, 1)]:
    rng = np.random.default_rng(n + d + f)
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)).to(torch.float16)
    w13 = torch.from_numpy((rng.standard_normal((d, 2, f)) / np.sqrt(d)).astype(np.float32)).to(torch.float16)
    h13 = torch.full((n, 2, f), float("nan"), dtype=torch.float16)
    act = torch.full((n, f), float("nan"), dtype=torch.float16)
    grid = (-(-n // bm) * -(-f // bn),)
    K.swiglu_up_kernel[grid](x, w13, h13, act, n, D=d, F=f, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm)
    ref_h = np.einsum("nd,dsf->nsf", x.double().numpy(), w13.double().numpy())
    got_h = h13.double().numpy()
    assert not np.isnan(got_h).any() and not np.isnan(act.double().numpy()).any(), "unwritten outputs"
    # The activation from the rounded gate/up the kernel stored (its documented contract).
    ref_a = _silu(got_h[:, 0]) * got_h[:, 1]
    errs = [np.abs(got_h - ref_h).max() / np.abs(ref_h).max(),
            np.abs(act.double().numpy() - ref_a).max() / np.abs(ref_a).max()]

    dy = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)).to(torch.float16)
    w2 = torch.from_numpy((rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)).to(torch.float16)
    dh13 = torch.full((n, 2, f), float("nan"), dtype=torch.float16)
    K.swiglu_down_bwd_kernel[grid](dy, w2, h13, dh13, n, D=d, F=f, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm)
    da = dy.double().numpy() @ w2.double().numpy().T
    g, u = got_h[:, 0], got_h[:, 1]
    eps = 1e-6
    ref_dg = da * (_silu(g + eps) * u - _silu(g - eps) * u) / (2 * eps)
    ref_du = da * _silu(g)
    got = dh13.double().numpy()
    assert not np.isnan(got).any(), "unwritten gate gradients"
    errs += [np.abs(got[:, 0] - ref_dg).max() / np.abs(ref_dg).max(),
             np.abs(got[:, 1] - ref_du).max() / np.abs(ref_du).max()]
    print(f"fused N={n} D={d} F={f}: h13 {errs[0]:.1e}, act {errs[1]:.1e}, dgate {errs[2]:.1e}, "
          f"dup {errs[3]:.1e}", flush=True)
    worst = max(worst, *errs)
  return worst


if __name__ == "__main__":
  main()
