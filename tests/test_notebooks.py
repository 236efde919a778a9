"""The notebooks run top to bottom on a CPU with the bundled sample, and their model learns.

Each notebook is executed as a user would (nbclient, a python3 kernel started in notebooks/). A last
cell appended here reads the variables the notebook leaves: the training cell's final val loss must
beat an untrained model, whose expected loss is ln(vocab) (a uniform guess over the vocabulary).
"""
import json
import math
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
CELL_TIMEOUT_S = 120


def _run(name, tmp_path, monkeypatch):
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile.mkdtemp() workdirs land here
  nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
      f"{name} is stored with outputs: regenerate it with python notebooks/make_notebooks.py")
  nb.cells.append(nbformat.v4.new_code_cell(
      'print("RESULT", json.dumps({"loss": FINAL_VAL_LOSS, "vocab": VOCAB_SIZE}))'))
  NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                 resources={"metadata": {"path": NB_DIR}}).execute()  # raises on any cell error
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
  line = next(l for l in text.splitlines() if l.startswith("RESULT "))
  return nb, json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_speedrun_notebook_runs_and_learns(tmp_path, monkeypatch):
  nb, r = _run("speedrun_tinystories.ipynb", tmp_path, monkeypatch)
  assert r["vocab"] == 10_000  # the speedrun's tokenizer size
  assert r["loss"] < math.log(r["vocab"]) - 1.0, r
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "Once upon a time" in outputs and "tokens/s" in outputs  # sample.py generated text


@pytest.mark.slow
def test_demo_notebook_runs_and_learns(tmp_path, monkeypatch):
  nb, r = _run("demo_train_generate.ipynb", tmp_path, monkeypatch)
  assert r["loss"] < math.log(r["vocab"]) - 1.0, r
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  for path in ("kind=mha", "kind=mla_svd", "DSA top-16"):  # all three decode paths ran
    assert path in outputs, path
  # The batch sweep trained every batch size on one token budget (as train.py counted it).
  rows = [(int(b), int(s), int(n.replace(",", "")), float(l)) for b, s, n, l in re.findall(
      r"batch +(\d+) x +(\d+) steps \(([\d,]+) tokens\): val loss ([\d.]+)", outputs)]
  assert len({b for b, *_ in rows}) >= 3, rows
  assert len({b * s for b, s, *_ in rows}) == 1 and len({n for _, _, n, _ in rows}) == 1, rows
  assert all(l < math.log(r["vocab"]) for *_, l in rows), rows
  # Muon trained too (same tokens as AdamW, asserted in the notebook) and learned like it.
  muon = re.search(r"Muon : final train loss [\d.]+, val loss ([\d.]+)", outputs)
  assert muon and float(muon.group(1)) < math.log(r["vocab"]) - 1.0, outputs[-2000:]
  assert "no-cache greedy output equals the cached one" in outputs  # the notebook's assert ran
