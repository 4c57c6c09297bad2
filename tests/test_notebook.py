"""notebooks/analysis.ipynb runs top to bottom against a small real store (digits, 1 epoch)."""
from __future__ import annotations

import itertools
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from sweeper.store import Store
from sweeper.experiments.train.spec import TrainSpec
from sweeper.trial import TrialContext, execute

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
STUDY = "depth_vs_width-tiny"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("nb-store"))
    store.ensure_writable()
    ctx = TrialContext(study=STUDY, store=store)
    for (depth, width), subset, seed in itertools.product([(8, 4), (14, 4), (8, 8)], ["all", "bn"], [0, 1]):
        spec = TrainSpec.from_values(dict(dataset="digits", depth=depth, width=width, trainable=subset, seed=seed,
                                          epochs=1, batch_size=64, augment="none", train_size=300, measure=["bn"]))
        assert execute(spec, ctx, threads=1)["status"] == "done"
    return store


def test_notebook_runs_against_a_store(tiny_store, monkeypatch):
    monkeypatch.setenv("SWEEPER_STORE", tiny_store.root)
    monkeypatch.setenv("SWEEPER_STUDY", STUDY)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # Fig. 3 and Fig. 5 redrawn by hand
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    assert STUDY in text and "accuracy_vs_bn_params" in text
    assert Path(tiny_store.path(STUDY, "figures"), "accuracy_vs_bn_params.png").exists()


def test_notebook_defaults_and_has_no_stored_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = "\n".join(c.source for c in nb.cells)
    assert 'os.environ.get("SWEEPER_STORE", "../store")' in source
    assert "import torch" not in source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed clean


def test_notebook_says_no_trials_yet_on_an_empty_store(tmp_path, monkeypatch):
    """A store with no trials (a new user's first look): every cell runs and says so, no KeyError."""
    empty = Store(tmp_path / "empty-store")
    empty.ensure_writable()  # the store exists, with its marker, and holds no study
    monkeypatch.setenv("SWEEPER_STORE", empty.root)
    monkeypatch.setenv("SWEEPER_STUDY", STUDY)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert errors == []
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    assert "no trials yet" in text
    assert not any("image/png" in o.get("data", {}) for o in outputs)  # nothing drawn from nothing
