"""Dev check (not the product): runs swiglu_kernel_triton.py's backward in Triton's CPU interpreter on
torch tensors and compares both gate gradients with NumPy float64 (the derivative of
silu(g) * u written out, and a central finite difference of it as a second reference).

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
  print(f"worst error {worst:.2e}")
  assert worst < 2e-3, worst   # fp16 outputs: ~5e-4 relative


if __name__ == "__main__":
  main()
