"""streams.py: with STREAM set, the weight gradients become calls annotated for XLA's stream N,
and nothing else about the step changes.

On the CPU the annotation is ignored, so values can be compared here bit for bit; which calls carry
it is read from the lowered step, the GPU configs' step traced with the Triton launches stood in
for (tests/hopper_compile.py). Whether the second stream makes the H100 step faster is a benchmark
(bench/dev_step_variants.sh), not a test.
"""
import re

import jax
import numpy as np
import pytest

import model
import streams
import train
from configs import tinystories_h100


def _grad_fn(cfg, tokens):
  """A fresh jit of the loss and its gradients: traced (and streams.STREAM read) at its first call."""
  return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, tokens[:, :-1], tokens[:, 1:], cfg)))


def _grads(cfg, params, tokens):
  return _grad_fn(cfg, tokens)(params)


def test_side_stream_changes_no_value(monkeypatch):
  """The model's loss and every gradient, bit for bit, with the weight gradients on stream 1 (the
  output projection's, on the XLA path) and without."""
  cfg = model.default_model_config()
  cfg.update(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, context_length=16, compute_dtype="float32")
  params = model.init_params(jax.random.key(0), cfg)
  tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, 97)
  want = _grads(cfg, params, tokens)
  monkeypatch.setattr(streams, "STREAM", 1)
  got = _grads(cfg, params, tokens)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  text = jax.jit(jax.grad(lambda p: model.loss_fn(p, tokens[:, :-1], tokens[:, 1:], cfg))).lower(params).as_text()
  assert text.count('_xla_stream_annotation = "1"') >= cfg.n_layers   # each layer's dWo at least


def test_side_returns_the_function_itself_when_off():
  f = lambda x: x + 1  # pylint: disable=unnecessary-lambda-assignment
  assert streams.side(f) is f


@pytest.mark.parametrize("stream", [0, 2])
def test_the_speedrun_steps_weight_gradients_are_the_annotated_calls(monkeypatch, stream):
  """The speedrun config's train step (the fused GPU path, its Triton launches compiled for sm_90
  instead of run) lowered with STREAM = 2: exactly the weight gradients are calls for stream 2, one
  for the head and four per layer (W_qkv, W_o, W13, W2), each ending in a dot; with STREAM = 0 none."""
  pytest.importorskip("triton")
  import hopper_compile  # pylint: disable=import-outside-toplevel
  hopper_compile.patch(monkeypatch)
  monkeypatch.setattr(streams, "STREAM", stream)
  config = tinystories_h100.get_config()
  config.model.update(n_layers=2, d_model=64, n_heads=2, d_ff=128, vocab_size=300)
  config.train.batch_size = 2
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  state = jax.eval_shape(lambda k: train._init_state(config, k), jax.random.key(0))  # pylint: disable=protected-access
  tokens_N = jax.ShapeDtypeStruct((100_000,), np.uint16)
  text = jax.jit(train.make_train_step(config, mesh, on_device=True)).lower(state, tokens_N).as_text()
  calls = re.findall(r"call @(\S+)\(.*_xla_stream_annotation = \"(\d)\"", text)
  assert len(calls) == (1 + 4 * config.model.n_layers if stream else 0), calls
  assert {s for _, s in calls} <= {str(stream)}
  for name, _ in calls:   # each annotated function computes a weight gradient: a dot_general inside
    body = text.split(f"func.func private @{name}(", 1)[1].split("\n  }\n", 1)[0]
    assert "dot_general" in body, name


@pytest.mark.gpu
def test_the_speedrun_steps_gradients_are_the_same_on_two_streams(monkeypatch):
  """On the GPU, where stream 1 is real: the speedrun config's loss and gradients (every FP8 option,
  the Triton kernels, a B8 x T256 batch) are bit for bit the same with the weight gradients on
  stream 1. A missing dependency between the streams would show here as a race."""
  config = tinystories_h100.get_config()
  cfg = config.model
  params = model.init_params(jax.random.key(0), cfg)
  tokens = jax.random.randint(jax.random.key(1), (8, cfg.context_length + 1), 0, cfg.vocab_size)
  want = _grads(cfg, params, tokens)
  monkeypatch.setattr(streams, "STREAM", 1)
  on_two = _grad_fn(cfg, tokens)
  for _ in range(3):
    got = on_two(params)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
