"""The one exception type for user mistakes, the CLI wrapper that reports it, and the lazy import of
the Triton kernel modules, whose failure is a user mistake (a GPU option on a machine without one).

DESIGN.md: a user mistake (missing file, bad flag, corrupt checkpoint, vocab too large for the
token dtype) raises UserError with a message that says what is wrong and what to do. Entry
points print that message on one line and exit with status 2, without a traceback; anything
else is a bug and keeps its traceback.
"""
import functools
import importlib
import sys


class UserError(Exception):
  """A mistake the user can fix; the message names the problem and the fix."""


def cli(main_fn):
  """Wraps an absl `main(argv)` so that a UserError ends the program with one line and status 2."""

  @functools.wraps(main_fn)
  def wrapped(argv):
    try:
      return main_fn(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  return wrapped


def triton_kernels(module_name, option, section="model"):
  """(jax_triton, the kernel module `module_name`) for config.<section>.<option>='triton', imported on
  first use so that CPU machines never load them; a UserError naming the fix where they cannot run."""
  try:
    import triton_ffi  # pylint: disable=import-outside-toplevel
    jax_triton = triton_ffi.load()
    kernels = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f"{option}='triton' needs triton and jax-triton ({e}); on an NVIDIA GPU run the "
                    f"GPU install line of README.md, or set --config.{section}.{option}=xla") from e
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu":
    raise UserError(f"{option}='triton' needs an NVIDIA GPU, but JAX runs on '{jax.default_backend()}'; "
                    f"set --config.{section}.{option}=xla on this machine")
  return jax_triton, kernels
