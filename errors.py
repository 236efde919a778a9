"""The one exception type for user mistakes, and the CLI wrapper that reports it.

DESIGN.md: a user mistake (missing file, bad flag, corrupt checkpoint, vocab too large for the
token dtype) raises UserError with a message that says what is wrong and what to do. Entry
points print that message on one line and exit with status 2, without a traceback; anything
else is a bug and keeps its traceback.
"""
import functools
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
