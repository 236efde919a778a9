"""Dev check (not the product): runs xent_kernel_triton.py's kernel in Triton's CPU interpreter on
torch tensors and compares the loss and the logits gradient with NumPy float64.

  TRITON_INTERPRET=1 python bench/dev_interpret_xent.py

It checks the kernel arithmetic (online logsumexp, ragged last block, soft-capping) before any GPU
time is spent; tests/test_xent_kernel.py checks the jax-triton side on a GPU.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import torch

import xent_kernel
import xent_kernel_triton as K


def main():
  worst = 0.0
  # Vocab below, at and above one block, ragged (the last block one logit wide: 4097 for a 4096-wide
  # block, 8193 for today's 8192); soft-cap off and on; large logits (x 40), where a sum of exp
  # without the running max would overflow.
  # Rows padded past the vocabulary (v_pad > v, as the head pads to VOCAB_ALIGN): the padding holds
  # huge values that must not be read, and its gradient must come out 0 (the buffer starts as NaN).
  # Whole blocks only (8192), and a ragged tile plus padding wider than one block (8190 in 8320);
  # with the 8192-wide block (the H100's, twenty-seventh session) 8193 leaves a one-logit tail.
  # With xs != 1 (an FP8 head's raw dot, model.head_fp8) the stored values are the logits / xs, and
  # the loss and gradient must be those of the logits: with and without a cap, padded, large.
  cases = [(5, 300, 0.0, 4, 300), (3, 2048, 0.0, 4, 2048), (3, 5001, 0.0, 4, 5001), (4, 4096, 15.0, 4, 4096),
           (2, 10_000, 30.0, 4, 10_000), (3, 10_000, 0.0, 4, 10_000), (3, 4097, 0.0, 4, 4097),
           (4, 10_000, 0.0, 40, 10_000), (3, 10_000, 0.0, 4, 10_112), (3, 300, 15.0, 4, 384), (2, 2040, 0.0, 4, 2176),
           (2, 8192, 0.0, 4, 8192), (2, 8190, 0.0, 4, 8320), (2, 8193, 0.0, 4, 8320)]
  cases = [c + (1.0,) for c in cases] + [(3, 10_000, 0.0, 4, 10_112, 1 / 256), (4, 10_000, 0.0, 40, 10_112, 1 / 256),
                                         (3, 300, 15.0, 4, 384, 1 / 256), (2, 5001, 30.0, 4, 5001, 1 / 256)]
  for n, v, cap, spread, v_pad, xs in cases:
    block = xent_kernel.BLOCK_V
    rng = np.random.default_rng(v)
    padded = np.full((n, v_pad), 3e4, np.float32)
    padded[:, :v] = rng.standard_normal((n, v)) * spread / xs
    logits = torch.from_numpy(padded).to(torch.float16)
    target = rng.integers(0, v, n).astype(np.int32)
    loss = torch.empty(n, dtype=torch.float32)
    grad = torch.full((n, v_pad), float("nan"), dtype=torch.float16)
    xscale = torch.tensor([xs], dtype=torch.float32)
    K.xent_fwd_kernel[(n,)](logits, torch.from_numpy(target), xscale, loss, grad, V=v, V_PAD=v_pad, SCALE=1.0 / n,
                            SOFTCAP=cap, WRITE_GRAD=True, **xent_kernel.tails(v, v_pad, block))
    pad_grad = grad[:, v:].to(torch.float64).numpy()
    assert np.all(pad_grad == 0), f"V={v} V_PAD={v_pad}: padded gradient not 0"
    logits, grad = logits[:, :v], grad[:, :v]
    x = logits.to(torch.float64).numpy() * xs
    z = cap * np.tanh(x / cap) if cap else x
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    p = np.exp(z - lse[:, None])
    p[np.arange(n), target] -= 1
    ref_grad = p / n * ((1 - np.tanh(x / cap) ** 2) if cap else 1.0)
    err_loss = np.abs(loss.numpy() - (lse - z[np.arange(n), target])).max()
    err_grad = np.abs(grad.to(torch.float64).numpy() - ref_grad).max() / np.abs(ref_grad).max()
    worst = max(worst, err_loss, err_grad)
    print(f"N={n} V={v} V_PAD={v_pad} softcap={cap} spread={spread} xs={xs:g}: loss abs err {err_loss:.1e}, grad rel err {err_grad:.1e}", flush=True)
  print(f"worst error {worst:.2e}")
  assert worst < 1e-3, worst   # fp16 storage of the gradient: ~5e-4 relative


if __name__ == "__main__":
  main()
