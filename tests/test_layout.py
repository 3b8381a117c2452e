"""The project's structure holds: only npvit/cli/ parses flags (imports argparse); nothing below the command line
imports it."""
import ast
import os

import npvit

PACKAGE = os.path.dirname(npvit.__file__)


def imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                          # relative: resolve against the file's package
                parts = os.path.relpath(os.path.dirname(path), os.path.dirname(PACKAGE)).split(os.sep)
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def library_files():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and not os.path.relpath(path, PACKAGE).startswith("cli" + os.sep):
                yield path


def test_only_the_command_line_parses_flags():
    found = [os.path.relpath(p, PACKAGE) for p in library_files()
             if any(m == "argparse" or m.startswith("argparse.") for m in imports(p))]
    assert not found, f"argparse outside npvit/cli/: {found}"


def test_nothing_below_the_command_line_imports_it():
    found = [os.path.relpath(p, PACKAGE) for p in library_files() if not p.endswith("__main__.py")
             and any(m == "npvit.cli" or m.startswith("npvit.cli.") for m in imports(p))]
    assert not found, f"imports of npvit/cli/ from the library below it: {found}"


def test_the_benchmarks_import_nothing_from_the_tests():
    """The article's PyTorch model they time lives in reference/, where the tests, the benchmarks and the notebooks
    all read it."""
    folder = os.path.join(os.path.dirname(PACKAGE), "benchmarks")
    found = [name for name in os.listdir(folder) if name.endswith(".py")
             and any(m == "tests" or m.startswith("tests.") for m in imports(os.path.join(folder, name)))]
    assert not found, found


def test_npvit_never_imports_torch():
    """torch is for the tests and benchmarks: npvit reads torch tensors by duck typing and leaves building torch
    models to transformers and timm (npvit/interop.py)."""
    every = [os.path.join(folder, name) for folder, _, files in os.walk(PACKAGE) for name in files
             if name.endswith(".py")]
    found = [os.path.relpath(p, PACKAGE) for p in every
             if any(m == "torch" or m.startswith("torch.") for m in imports(p))]
    assert not found, f"npvit/ imports torch in {found}"
