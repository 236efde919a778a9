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


def side(fn):
  """fn itself, or with STREAM set, fn jitted as its own computation on stream STREAM."""
  if not STREAM:
    return fn
  from jax.experimental.compute_on import compute_on  # pylint: disable=import-outside-toplevel
  jitted = jax.jit(fn)

  def on_stream(*args):
    with compute_on(f"gpu_stream:{STREAM}"):
      return jitted(*args)

  return on_stream
