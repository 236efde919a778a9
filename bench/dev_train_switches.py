"""Dev (not the product): train.py with module switches set first, for loss A/Bs of switches that are
module constants rather than config keys (bench/dev_loss_ab.sh's TRAIN=). TRAIN_SWITCHES holds
comma-separated module.NAME=value items, each value a Python literal:

  TRAIN_SWITCHES=fp8_mlp.PARALLEL_W13_STATIC_H=True python bench/dev_train_switches.py --config=configs/tinystories_h100.py
  TRAIN=bench/dev_train_switches.py OUT=dir SEEDS="0 1 2" bash bench/dev_loss_ab.sh base= \\
      statich="TRAIN_SWITCHES=fp8_mlp.PARALLEL_W13_STATIC_H=True"

Unset or empty: train.py unchanged.
"""
import ast
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=wrong-import-position

import errors  # pylint: disable=wrong-import-position
import train  # pylint: disable=wrong-import-position


def set_switches(spec):
  """Sets each module.NAME=value of the comma-separated spec; returns what it set, as (module, name, value)."""
  done = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    target, value = item.split("=", 1)
    module, name = target.rsplit(".", 1)
    mod = importlib.import_module(module)
    if not hasattr(mod, name):
      raise errors.UserError(f"TRAIN_SWITCHES: {module} has no {name}")
    setattr(mod, name, ast.literal_eval(value))
    done.append((module, name, getattr(mod, name)))
  return done


def main(argv):
  for module, name, value in set_switches(os.environ.get("TRAIN_SWITCHES", "")):
    print(f"switch: {module}.{name} = {value!r}", flush=True)
  train.main(argv)


if __name__ == "__main__":
  app.run(errors.cli(main), flags_parser=train._parse_flags)   # pylint: disable=protected-access
