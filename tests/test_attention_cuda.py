"""attention_cuda: the CUDA kernel builds without a GPU (CI), and on a GPU it equals a float32
attention written out here with einsum, mask and softmax.

Tolerances (|o - ref| <= atol + rtol·|ref|, elementwise):
  bf16 inputs: 2e-2 + 2e-2·|ref|. The reference sees the same bf16 values in fp32; the kernel
    rounds P to bf16 for the P·V product and rounds O to bf16 (each 2^-9 relative).
  fp32 inputs: 2e-4 + 2e-4·|ref|. The kernel forms fp32 products from two bf16 halves
    ("3xBF16", ~16 mantissa bits); the reference uses full fp32 (precision=HIGHEST).
  logsumexp: 1e-3 absolute for both (it is built from the fp32 scores before any P rounding).
"""
import ctypes
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_cuda
from errors import UserError

TOL = {jnp.bfloat16: (2e-2, 2e-2), jnp.float32: (2e-4, 2e-4)}


@functools.partial(jax.jit, static_argnames=("causal", "scale"))
def reference(q_BTHK, k_BTHK, v_BTHK, causal, scale):
  """Plain float32 attention: returns (o_BTHK, lse_BHT)."""
  q, k, v = (x.astype(jnp.float32) for x in (q_BTHK, k_BTHK, v_BTHK))
  hi = jax.lax.Precision.HIGHEST  # no TF32 shortcut in the reference
  s_BHTS = jnp.einsum("bthk,bshk->bhts", q, k, precision=hi) * scale
  if causal:
    T = q.shape[1]
    s_BHTS = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s_BHTS, -jnp.inf)
  lse_BHT = jax.nn.logsumexp(s_BHTS, axis=-1)
  p_BHTS = jnp.exp(s_BHTS - lse_BHT[..., None])
  return jnp.einsum("bhts,bshk->bthk", p_BHTS, v, precision=hi), lse_BHT


def random_qkv(seed, shape, dtype):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys]


def assert_close(o, ref, dtype, what):
  atol, rtol = TOL[dtype]
  o, ref = np.asarray(o, np.float32), np.asarray(ref, np.float32)
  assert np.isfinite(o).all(), f"{what}: non-finite output"
  err = np.abs(o - ref) - (atol + rtol * np.abs(ref))
  worst = np.unravel_index(np.argmax(err), err.shape)
  assert err.max() <= 0, f"{what}: |o - ref| too large at {worst}: {o[worst]} vs {ref[worst]}"


# ------------------------------------------------------------------------------ CPU (CI) tests


@pytest.mark.slow
def test_build_compiles_and_exports_the_ffi_handlers(tmp_path):
  # Only sm_90 here to keep CI short; a source or XLA FFI API break fails this build.
  path = attention_cuda.build(archs=("sm_90",), out_dir=str(tmp_path))
  lib = ctypes.CDLL(path)  # loading needs no GPU
  assert lib.TinylmAttentionFwd and lib.TinylmAttentionFwdInto
  assert attention_cuda.build(archs=("sm_90",), out_dir=str(tmp_path)) == path  # cached
  assert len(list(tmp_path.iterdir())) == 1  # no temporary files left behind


def test_missing_nvcc_is_a_user_error(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))
  monkeypatch.delenv("CUDA_HOME", raising=False)
  monkeypatch.delenv("CUDA_PATH", raising=False)
  monkeypatch.setattr(attention_cuda, "_DEFAULT_CUDA_HOME", str(tmp_path / "none"))
  with pytest.raises(UserError, match="nvcc"):
    attention_cuda.build(out_dir=str(tmp_path))


@pytest.mark.parametrize("shapes, dtype, match", [
    ([(1, 8, 2, 48)] * 3, jnp.bfloat16, "head_dim"),
    ([(1, 8, 2, 64)] * 3, jnp.float16, "bfloat16 or float32"),
    ([(1, 8, 2, 64), (1, 8, 1, 64), (1, 8, 1, 64)], jnp.bfloat16, "one shape"),
    ([(8, 2, 64)] * 3, jnp.bfloat16, "one shape"),
])
def test_unsupported_inputs_are_user_errors(shapes, dtype, match):
  q, k, v = (jnp.zeros(s, dtype) for s in shapes)
  with pytest.raises(UserError, match=match):
    attention_cuda.cuda_attention(q, k, v)


def test_no_gpu_is_a_user_error():
  if jax.default_backend() == "gpu":
    pytest.skip("this machine has a GPU")
  q = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
  with pytest.raises(UserError, match="needs an NVIDIA GPU"):
    attention_cuda.cuda_attention(q, q, q)


# ------------------------------------------------------------------------------ GPU tests

# (B, T, H, K): batch 1-8, heads 1-16, every head dim, and sequence lengths that are and are not
# multiples of the kernel's 64-row tiles (1, 17, 1000 are not), each tried causal and not.
SHAPES = [
    (1, 1, 1, 64), (2, 1, 3, 32), (1, 17, 4, 128), (3, 17, 2, 32), (8, 128, 16, 64),
    (2, 128, 1, 128), (4, 256, 8, 32), (1, 256, 12, 128), (2, 1000, 4, 64), (1, 1000, 2, 128),
    (1, 1000, 3, 32), (1, 4096, 2, 64), (2, 4096, 1, 128), (1, 4096, 4, 32),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float32_reference(shape, causal, dtype):
  seed = zlib.crc32(repr((shape, causal, jnp.dtype(dtype).name)).encode())
  q, k, v = random_qkv(seed, shape, dtype)
  scale = float(1 / np.sqrt(shape[-1]))
  o, lse = attention_cuda.cuda_attention(q, k, v, causal=causal, return_lse=True)
  assert o.shape == shape and o.dtype == dtype
  o_ref, lse_ref = reference(q, k, v, causal, scale)
  assert_close(o, o_ref, dtype, "o")
  np.testing.assert_allclose(np.asarray(lse), np.asarray(lse_ref), atol=1e-3, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", [(2, 17, 3, 64), (1, 1000, 2, 128), (3, 130, 5, 32)],
                         ids=lambda s: "x".join(map(str, s)))
def test_every_output_element_is_written(shape, dtype):
  # The output buffer starts as NaN; any row or column the kernel skips stays NaN.
  q, k, v = random_qkv(7, shape, dtype)
  poison = jnp.full(shape, jnp.nan, dtype)
  for causal in (True, False):
    o = attention_cuda.cuda_attention(q, k, v, causal=causal, _out_init=poison)
    assert_close(o, reference(q, k, v, causal, float(1 / np.sqrt(shape[-1])))[0], dtype, "o")


@pytest.mark.gpu
def test_works_under_jit_with_a_custom_scale():
  q, k, v = random_qkv(3, (2, 300, 4, 64), jnp.bfloat16)
  f = jax.jit(lambda q, k, v: 2.0 * attention_cuda.cuda_attention(q, k, v, sm_scale=0.3))
  o = f(q, k, v)
  assert_close(o / 2.0, reference(q, k, v, True, 0.3)[0], jnp.bfloat16, "jit o")
  assert_close(f(v, q, k) / 2.0, reference(v, q, k, True, 0.3)[0], jnp.bfloat16, "jit o, new inputs")


@pytest.mark.gpu
def test_large_scores_stay_finite():
  # Scores in the hundreds overflow exp() without the running-max subtraction. bf16 inputs keep
  # the scores exact (bf16 products are exact in fp32), so large scores cost no accuracy.
  q, k, v = random_qkv(11, (1, 513, 2, 64), jnp.bfloat16)
  q = q * 30
  o = attention_cuda.cuda_attention(q, k, v, causal=True)
  assert_close(o, reference(q, k, v, True, 1 / 8)[0], jnp.bfloat16, "o")
