"""Executes the notebooks from their sources and saves them with their outputs, so that what GitHub shows is
what they print.

    python notebooks/build.py              # all three (about a minute and a half on 2 CPU cores)
    python notebooks/build.py 02           # only the ones whose name holds "02"

Each notebook's source is a jupytext percent-format script beside it (``01_tour.py``: ``# %%`` cells),
reviewed and diffed like code; the ``.ipynb`` is paired with it (``jupytext --sync`` keeps an edit made
in Jupyter and the script equal). tests/test_notebooks.py fails when a committed notebook's cells differ
from its script's, and runs the notebooks top to bottom. Needs jupytext, nbclient and ipykernel (the
[learn] and [test] extras).
"""
import os
import sys

import jupytext
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["01_tour.py", "02_backprop.py", "03_exercises.py"]


def build(source, timeout=600):
    nb = jupytext.read(os.path.join(HERE, source))
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
    for cell in nb.cells:                       # stable files: no execution timestamps in the diff
        cell.metadata.pop("execution", None)
    target = source.replace(".py", ".ipynb")
    jupytext.write(nb, os.path.join(HERE, target), fmt="ipynb")
    print(f"wrote notebooks/{target}")


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for source in SOURCES:
        if not wanted or any(w in source for w in wanted):
            build(source)
