"""Every notebook runs top to bottom in its quick mode (SADDLEJAX_QUICK=1), checks included."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    """The notebook executes without error; its own cells assert the paper's claims."""
    monkeypatch.setenv("SADDLEJAX_QUICK", "1")
    # The kernel shares the suite's compilation cache (conftest), as the CLI processes do: a
    # preset's solves compiled here are loaded, not compiled again, by the tests that run it.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.environ["SADDLEJAX_TEST_CACHE"])
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    assert os.environ["SADDLEJAX_QUICK"] == "1"


def test_notebooks_exist():
    """At least one notebook ships (a glob that matched nothing would silently test nothing)."""
    assert NOTEBOOKS
