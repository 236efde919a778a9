"""Dev check (not the product): runs adamw_kernel_triton.py's kernel in Triton's CPU interpreter on
torch tensors for several steps and compares it with AdamW written out in NumPy float64 (the
formula of adamw.py's docstring, with the clipping scale and weight decay).

  TRITON_INTERPRET=1 python bench/dev_interpret_adamw.py

tests/test_adamw.py checks the jax-triton side (the wrapper, aliasing, the tree) on a GPU.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import torch

import adamw_kernel_triton as K

B1, B2, EPS = 0.9, 0.95, 1e-8


def run(n, wd, grad_dtype, block, steps=4):
  """Worst relative error of (p, m, v, sum of squares) after `steps` kernel steps against float64."""
  rng = np.random.default_rng(n + int(wd * 10))
  p64 = rng.standard_normal(n)
  p = torch.from_numpy(p64.astype(np.float32))
  m, v = torch.zeros(n), torch.zeros(n)
  m64, v64 = np.zeros(n), np.zeros(n)
  programs = -(-n // block)
  errs = []
  for t in range(1, steps + 1):
    g = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 3).to(grad_dtype)
    lr, scale = 1e-2 * t, (0.5 if t % 2 else 1.0)   # clipping on every other step
    bc1, bc2 = 1 - B1 ** t, 1 - B2 ** t
    hyp = torch.tensor([lr, scale, bc1, bc2], dtype=torch.float32)
    p_out, m_out, v_out, sq = torch.empty(n), torch.empty(n), torch.empty(n), torch.full((programs,), float("nan"))
    K.adamw_kernel[(programs,)](p, g, m, v, hyp, p_out, m_out, v_out, sq, N=n, B1=B1, B2=B2, EPS=EPS, WD=wd,
                                BLOCK=block)
    # The reference: the gradient as the kernel sees it (scaled, rounded to its dtype), then float64.
    g64 = (g.float() * scale).to(grad_dtype).double().numpy()
    m64 = B1 * m64 + (1 - B1) * g64
    v64 = B2 * v64 + (1 - B2) * g64 * g64
    p64 = p64 - lr * ((m64 / bc1) / (np.sqrt(v64 / bc2) + EPS) + wd * p64)
    p, m, v = p_out, m_out, v_out
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()  # pylint: disable=unnecessary-lambda-assignment
    errs += [rel(p.double().numpy(), p64), rel(m.double().numpy(), m64), rel(v.double().numpy(), v64),
             abs(float(sq.double().sum()) - float((p.double().numpy() ** 2).sum())) / float((p64 ** 2).sum())]
  return errs


def main():
  worst = 0.0
  # one ragged program, whole programs, several programs with a ragged last one; decay on and off
  for n, wd, dtype, block in [(1000, 0.1, torch.float32, 1024), (4096, 0.0, torch.float32, 1024),
                              (5000, 0.1, torch.bfloat16, 1024), (3000, 0.0, torch.bfloat16, 512)]:
    errs = run(n, wd, dtype, block)
    assert np.isfinite(errs).all(), errs
    worst = max(worst, *errs)
    print(f"N={n} WD={wd} grads {dtype} BLOCK={block}: worst p/m/v/sq " + " ".join(f"{e:.1e}" for e in errs[-4:]),
          flush=True)
  print(f"worst error {worst:.2e}")
  assert worst < 1e-5, worst   # fp32 state against float64: a few ulps over 4 steps


if __name__ == "__main__":
  main()
