"""The notebooks are stored without outputs and run headless, top to bottom, with nbclient."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_the_chapter_notebook_exists():
    assert [path.name for path in NOTEBOOKS] == ["adagrad.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_runs_top_to_bottom_and_shows_figures(path, tmp_path, data_dir):
    """The package's shipped data; run in a scratch directory."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    errors = [output for output in outputs if output.output_type == "error"]
    assert errors == []
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 1
    text = "".join(output.get("text", "") for output in outputs)
    assert "epoch 20, x1 -2.382563, x2 -0.158591" in text  # the chapter's 2-D result
    assert "epoch 20, x1 -0.002295, x2 -0.000000" in text
