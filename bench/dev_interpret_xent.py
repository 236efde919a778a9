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
  # Vocab below, at and above one block, ragged; soft-cap off and on.
  # Vocab below, at and above one block, ragged (the last block one logit wide: 4097); soft-cap off
  # and on; large logits (x 40), where a sum of exp without the running max would overflow.
  # Rows padded past the vocabulary (v_pad > v, as the head pads to VOCAB_ALIGN): the padding holds
  # huge values that must not be read, and its gradient must come out 0 (the buffer starts as NaN).
  # Whole blocks only (8192), and a ragged tile plus padding wider than one block (8190 in 8320).
  # With xs != 1 (an FP8 head's raw dot, model.head_fp8) the stored values are the logits / xs, and
  # the loss and gradient must be those of the logits: with and without a cap, padded, large.
  cases = [(5, 300, 0.0, 4, 300), (3, 2048, 0.0, 4, 2048), (3, 5001, 0.0, 4, 5001), (4, 4096, 15.0, 4, 4096),
           (2, 10_000, 30.0, 4, 10_000), (3, 10_000, 0.0, 4, 10_000), (3, 4097, 0.0, 4, 4097),
           (4, 10_000, 0.0, 40, 10_000), (3, 10_000, 0.0, 4, 10_112), (3, 300, 15.0, 4, 384), (2, 2040, 0.0, 4, 2176),
           (2, 8192, 0.0, 4, 8192), (2, 8190, 0.0, 4, 8320)]
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
  fp8_grad()


def fp8_grad():
  """xent_fp8_grad_kernel (model.head_fp8_bwd): the loss, and U = softmax - onehot as e4m3(U * 448)
  [N, V_PAD] and e5m2(U * 2^15) [V_PAD, N], against NumPy's U rounded by ml_dtypes: each entry the
  reference's rounding or its neighbour (the kernel's exp2 is within 2 ulp of fp32, so a value at a
  rounding boundary may go either way, and the interpreter rounds some normals wrongly), at most 1% of
  entries off, padding 0. Rows not a multiple
  of BT, ragged vocabularies, a soft cap, a scale. Only entries in each format's normal range are
  compared by code: Triton's interpreter rounds fp8 subnormals wrongly (0.001 -> 0 in e4m3, 1e-5 -> 0
  in e5m2; ml_dtypes and the GPU's cvt keep them), so there they are only bounded by the smallest
  normal, and values it rounds up to a power of two lose the carry (below); tests/test_xent_kernel.py
  compares every entry on the GPU."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  worst = 0.0
  for n, v, cap, spread, v_pad, xs, bt, block in [(13, 300, 0.0, 4, 384, 1.0, 8, 128), (16, 10_000, 0.0, 4, 10_112, 1 / 256, 8, 1024),
                                                  (9, 5001, 30.0, 6, 5120, 1 / 256, 4, 1024), (5, 2048, 0.0, 10, 2048, 1.0, 16, 1024),
                                                  (8, 10_000, 15.0, 4, 10_112, 1.0, 8, 2048)]:
    rng = np.random.default_rng(n + v)
    padded = np.full((n, v_pad), 3e4, np.float32)
    padded[:, :v] = rng.standard_normal((n, v)) * spread / xs
    logits = torch.from_numpy(padded).to(torch.float16)
    target = rng.integers(0, v, n).astype(np.int32)
    loss = torch.empty(n, dtype=torch.float32)
    u8 = torch.full((n, v_pad), 1.0, dtype=torch.float8_e4m3fn)
    u8t = torch.full((v_pad, n), 1.0, dtype=torch.float8_e5m2)
    programs = 2   # a persistent grid: each program loops over several row blocks (and one over none at N=5)
    K.xent_fp8_grad_kernel[(programs,)](logits, torch.from_numpy(target), torch.tensor([xs], dtype=torch.float32),
                                        loss, u8, u8t, N=n, V=v, V_PAD=v_pad, SOFTCAP=cap, DH_SCALE=448.0,
                                        DW_SCALE=2.0 ** 15, BT=bt, PROGRAMS=programs,
                                        **xent_kernel.tails(v, v_pad, block))
    x = logits[:, :v].to(torch.float64).numpy() * xs
    z = cap * np.tanh(x / cap) if cap else x
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    u = np.exp(z - lse[:, None])
    u[np.arange(n), target] -= 1
    u *= (1 - np.tanh(x / cap) ** 2) if cap else 1.0
    err_loss = np.abs(loss.numpy() - (lse - z[np.arange(n), target])).max()
    assert err_loss < 1e-3, err_loss
    for name, got, scale, f8, tiny in [("e4m3", u8.to(torch.float32).numpy(), 448.0, ml_dtypes.float8_e4m3fn, 2.0 ** -6),
                                       ("e5m2", u8t.to(torch.float32).numpy().T, 2.0 ** 15, ml_dtypes.float8_e5m2, 2.0 ** -14)]:
      assert np.all(got[:, v:] == 0), f"{name}: padding not 0"
      got = got[:, :v].astype(np.float64)
      ref = (u * scale).astype(f8).astype(np.float64)
      codes = lambda a, f8=f8: a.astype(f8).view(np.uint8).astype(np.int32)   # pylint: disable=unnecessary-lambda-assignment
      # fp8 codes of the same sign are ordered like their values: neighbours differ by 1.
      # The interpreter also drops the carry when a value rounds up to a power of two (127.9 -> 64, not
      # 128, in both formats): a power of two at under 2/3 of the exact value is taken as its double.
      exact = np.abs(u * scale)
      pow2 = (got != 0) & (np.log2(np.abs(np.where(got == 0, 1, got))) % 1 == 0)
      got = np.where(pow2 & (exact > 1.5 * np.abs(got)), 2 * got, got)
      step = np.abs(codes(got) - codes(ref))
      sub = np.abs(ref) < tiny
      assert np.all(np.abs(got[sub]) <= tiny), f"{name}: a subnormal-range entry came out large"
      step[sub] = 0
      off = float(np.mean(step != 0))
      worst = max(worst, off)
      print(f"fp8 grad N={n} V={v} V_PAD={v_pad} cap={cap} xs={xs:g} BT={bt}: {name} entries off by one code "
            f"{off:.2%}, max code step {step.max()}, loss err {err_loss:.1e}", flush=True)
      assert step.max() <= 1 and off < 0.01, (name, step.max(), off)
  print(f"fp8 grad: worst share of entries one code off {worst:.2%}")


if __name__ == "__main__":
  main()
