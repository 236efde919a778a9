"""Weight gradients on a second GPU stream (issue 8; off unless STREAM is set).

A weight gradient, h^T dY, is read by nothing but the optimizer, yet XLA runs every kernel of the
step on one stream in one order, so each weight gradient sits on the path of the input gradients
that the next layer's backward waits for. `side(fn)(*args)` makes fn its own computation on XLA's
stream STREAM (jax.experimental.compute_on's 'gpu_stream:N': an async call that the scheduler can
overlap with the kernels that do not depend on it). The values are the same: only where the
kernels run changes.
"""
import jax

# 0: every kernel on the one stream; N > 0: the weight gradients on XLA's stream N. Backends
# without streams (the CPU) ignore the annotation and run the same computation.
STREAM = 0


def _stream_call(fn, compute_type):
  """fn as one call for compute_type through compute_on's function form: jax 0.11's compute_on
  (compute_type keyword-only), which jax 0.10 names compute_on2 (its compute_on is a context
  manager)."""
  import inspect  # pylint: disable=import-outside-toplevel
  from jax.experimental import compute_on as co  # pylint: disable=import-outside-toplevel
  param = inspect.signature(co.compute_on).parameters.get("compute_type")
  wrap = co.compute_on if param is not None and param.kind == param.KEYWORD_ONLY else co.compute_on2
  return wrap(fn, compute_type=compute_type, out_memory_spaces=jax.memory.Space.Device)


def side(fn):
  """fn itself, or with STREAM set, fn traced as its own computation (one call) on stream STREAM."""
  if not STREAM:
    return fn
  return _stream_call(fn, f"gpu_stream:{STREAM}")
