"""The notebooks (notebooks/*.ipynb) run top to bottom without an error, as a learner runs them; the ones in the
repository carry their outputs and figures, so they render on GitHub."""
import os

import pytest

from tests.cifar_fixtures import REPO

nbformat = pytest.importorskip("nbformat", reason="the notebooks need nbformat, nbclient, ipykernel and jupytext ([test] extra)")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")

NOTEBOOKS = ["01_tour.ipynb", "02_backprop.ipynb", "03_exercises.ipynb"]
FOLDER = os.path.join(REPO, "notebooks")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_notebook_runs_top_to_bottom(name, monkeypatch, tmp_path):
    """03 from its own folder, 01 and 02 from a folder outside the checkout (they find it through npvit)."""
    monkeypatch.delenv("NPVIT_CIFAR10_DIR", raising=False)      # the tour's shipped sample suffices
    if name == "01_tour.ipynb":                                  # and a missing folder named there is said so
        monkeypatch.setenv("NPVIT_CIFAR10_DIR", str(tmp_path / "no-such-folder"))
    nb = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    cwd = FOLDER if name == "03_exercises.ipynb" else str(tmp_path)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    expected = {"01_tour.ipynb": "accuracy on", "02_backprop.ipynb": "PASS  ViT", "03_exercises.ipynb": "not written yet"}
    assert expected[name] in text
    if name == "01_tour.ipynb":
        assert f"note: NPVIT_CIFAR10_DIR={tmp_path / 'no-such-folder'} holds no cifar-10-batches-py/" in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebooks_in_the_repository_carry_their_outputs(name):
    nb = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "run notebooks/build.py to execute and save it"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    figures = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert figures >= {"01_tour.ipynb": 5, "02_backprop.ipynb": 3, "03_exercises.ipynb": 1}[name], "its figures"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_is_its_source_script_run(name):
    """The .py beside each notebook is what people edit and review; the committed .ipynb must hold the same cells,
    in the same order, with the same kind and text, or notebooks/build.py was not run after an edit."""
    script = jupytext.read(os.path.join(FOLDER, name.replace(".ipynb", ".py")))
    notebook = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
    mine, built = cells(script), cells(notebook)
    differ = [i for i, (a, b) in enumerate(zip(mine, built)) if a != b]
    assert len(mine) == len(built) and not differ, (
        f"notebooks/{name} differs from its source from cell {differ[0] if differ else min(len(mine), len(built))}: "
        f"run python notebooks/build.py {name[:2]}")


def test_the_notebooks_find_the_checkout_from_inside_it_or_through_npvit(tmp_path):
    from npvit.checkout import find_checkout
    assert find_checkout(FOLDER) == REPO == find_checkout(os.path.join(REPO, "npvit", "ops"))
    assert find_checkout(str(tmp_path)) == REPO          # outside it: the checkout npvit was installed from
