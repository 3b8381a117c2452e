"""The kernel-set contract (npvit/ops/contract.py): every set that can be imported here has every primitive
with the contract's signature, returns the named caches, and is chosen by name; a table that breaks the
contract is refused when it is built; and every GEMM and sum of a model goes through its set."""
import ast
import inspect
import os
from functools import partial

import numpy as np
import pytest

import npvit
from npvit import ViT, softmax_cross_entropy
from npvit.config import ViTConfig
from npvit.ops import REGISTRY, available_kernels, get_kernels, kernels_name
from npvit.ops.contract import (COMPOSITE_NAMES, PRIMITIVE_NAMES, PRIMITIVES, AttentionCache, Conv2dCache,
                                CrossEntropyCache, GeluCache, LayerNormCache, LinearCache)
from npvit.ops.kernelset import KernelSet, signature_of
from npvit.ops.reference import REFERENCE

OPS_DIR = os.path.join(os.path.dirname(npvit.__file__), "ops")
LAYERS_DIR = os.path.join(os.path.dirname(npvit.__file__), "layers")


def importable_sets():
    """Every registered set whose library imports here (the fused set needs CuPy, not a GPU, to be imported)."""
    return [r.load() for r in REGISTRY if r.installed()]


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda r: r.name)
def test_every_set_has_every_primitive_with_the_contracts_signature(entry):
    if not entry.installed():
        pytest.skip(f"the {entry.name} set is checked where {entry.library} can be imported")
    ops = entry.load()                      # its name and backends are the registry's (load checks)
    assert isinstance(ops, KernelSet) and ops.name == entry.name and ops.backends == entry.backends
    for spec in PRIMITIVES:
        fn = getattr(ops, spec.__name__)
        assert signature_of(fn) == signature_of(spec), (entry.name, spec.__name__)
    for composite in COMPOSITE_NAMES:
        assert callable(getattr(ops, composite)), composite
    assert set(ops.fused) <= set(COMPOSITE_NAMES)


@pytest.mark.parametrize("ops", [s for s in available_kernels("numpy")], ids=lambda s: s.name)
def test_every_forward_returns_its_named_cache(ops):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 12))
    qkv = rng.standard_normal((3, 2, 3, 5, 4))
    expect = {
        LayerNormCache: ops.layernorm_forward(x, np.ones(12), np.zeros(12))[1],
        GeluCache: ops.gelu_forward(x)[1],
        LinearCache: ops.linear_forward(x, rng.standard_normal((7, 12)), None)[1],
        Conv2dCache: ops.conv2d_forward(rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((6, 3, 4, 4)),
                                        None, 4, 0)[1],
        AttentionCache: ops.attention_forward(qkv, 0.5)[1],
        CrossEntropyCache: ops.cross_entropy_forward(rng.standard_normal((2, 7)), np.array([1, 2]))[1],
    }
    for record, cache in expect.items():
        assert type(cache) is record, (ops.name, record.__name__, type(cache))
    assert expect[GeluCache].approximate == "tanh" and expect[AttentionCache].num_queries == 5


def test_a_table_that_breaks_the_contract_is_refused_naming_what():
    primitives = {n: getattr(REFERENCE, n) for n in PRIMITIVE_NAMES}
    with pytest.raises(TypeError, match=r"missing primitives \['matmul'\]"):
        KernelSet("broken", ("numpy",), {k: v for k, v in primitives.items() if k != "matmul"})
    with pytest.raises(TypeError, match=r"unknown primitives \['gemm'\]"):
        KernelSet("broken", ("numpy",), {**primitives, "gemm": print})
    # the old softmax signature (scores, out=None, scale=1.0): the order of the parameters is part of it
    with pytest.raises(TypeError, match=r"broken.softmax_forward\(scores, out=None, scale=1.0\) does not have the "
                                        r"contract's signature softmax_forward\(scores, scale=1.0, out=None\)"):
        KernelSet("broken", ("numpy",), {**primitives, "softmax_forward": lambda scores, out=None, scale=1.0: 0})
    with pytest.raises(TypeError, match="fused replacements of no composite"):
        KernelSet("broken", ("numpy",), primitives, fused={"softmax_forward": print})
    with pytest.raises(TypeError, match="broken.attention_forward"):
        KernelSet("broken", ("numpy",), primitives, fused={"attention_forward": lambda qkv, scale: 0})


def test_a_fused_replacement_is_what_the_set_runs():
    calls = []

    def attention_forward(qkv, scale, num_queries=None, mask=None):
        calls.append(qkv.shape)
        return REFERENCE.attention_forward(qkv, scale, num_queries, mask)

    ops = KernelSet("mine", ("numpy",), {n: getattr(REFERENCE, n) for n in PRIMITIVE_NAMES},
                    fused={"attention_forward": attention_forward})
    assert ops.fused == ("attention_forward",) and ops.origin("attention_forward") == __name__
    ViT(ViTConfig.tiny(), kernels=ops)(np.zeros((2, 3, 8, 8), np.float32))
    assert len(calls) == 2                                                  # one per block


def counting_set():
    """The reference's primitives, counting the calls of each."""
    counts = {}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        wrapper.__signature__ = inspect.signature(fn)
        return wrapper

    ops = KernelSet("counting", ("numpy",), {n: counted(n, getattr(REFERENCE, n)) for n in PRIMITIVE_NAMES})
    return ops, counts


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_every_gemm_and_sum_of_a_model_goes_through_its_set(pooling):
    """Forward: the patch embedding, per block 4 Linear + 2 attention GEMMs, the classifier. Backward: two GEMMs
    per Linear and convolution, four per attention core; a sum per bias, two for [CLS] and positions."""
    c = {**ViTConfig.tiny().to_dict(), "pooling": pooling}
    L = c["num_hidden_layers"]
    ops, counts = counting_set()
    model = ViT(c, kernels=ops, dtype="float64")
    logits = model(np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    mean = pooling == "mean"
    assert counts == {"matmul": 6 * L + 2, "im2col": 1, "layernorm_forward": 2 * L, "gelu_forward": L,
                      "softmax_forward": L, **({"reduce_sum": 1} if mean else {})}, counts
    counts.clear()
    _, d = softmax_cross_entropy(logits, np.array([1, 2]), kernels=ops)
    model.backward(d)
    assert counts == {"matmul": 12 * L + 4, "reduce_sum": 4 * L + 4, "col2im": 1, "layernorm_backward": 2 * L,
                      "gelu_backward": L, "softmax_backward": L, "cross_entropy_forward": 1,
                      "cross_entropy_backward": 1}, counts


def python_files(folder):
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py")]


def test_the_layers_do_no_math_of_their_own():
    """No @ and no reduction in the forward and backward passes of npvit/layers/ and the model: the kernel set
    does the math (so a set can bring its own GEMM); the counting test above shows the calls arrive."""
    reductions = {"sum", "mean", "einsum", "matmul", "dot", "tensordot", "max", "min"}
    found = []
    for path in python_files(LAYERS_DIR) + [os.path.join(os.path.dirname(LAYERS_DIR), "model.py")]:
        passes = [f for f in ast.walk(ast.parse(open(path).read()))
                  if isinstance(f, ast.FunctionDef) and f.name in ("forward", "backward")]
        assert passes or path.endswith(("__init__.py", "base.py")), path
        for node in (n for f in passes for n in ast.walk(f)):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                found.append(f"{os.path.basename(path)}:{node.lineno} @")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in reductions:
                found.append(f"{os.path.basename(path)}:{node.lineno} .{node.func.attr}()")
    assert not found, found


def test_a_set_says_what_it_is_in_its_own_file():
    """No set inherits through ``import *``; no set file defines a composite (they are written once)."""
    for path in python_files(OPS_DIR):
        tree = ast.parse(open(path).read())
        stars = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]
        assert not stars, (path, stars)
        if not path.endswith(("composites.py", "contract.py", "kernelset.py")):
            defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            assert not defined & set(COMPOSITE_NAMES), (path, defined & set(COMPOSITE_NAMES))
    for ops in importable_sets():
        for name in PRIMITIVE_NAMES:
            assert ops.origin(name).startswith("npvit.ops."), (ops.name, name)
        assert all(isinstance(getattr(ops, c), partial) for c in COMPOSITE_NAMES if c not in ops.fused)


def test_kernel_sets_are_chosen_by_name_or_given_as_a_set():
    assert get_kernels("reference") is REFERENCE is get_kernels()
    assert get_kernels(REFERENCE) is REFERENCE
    with pytest.raises(ValueError, match="kernels='fused' are CUDA kernels"):
        ViT(ViTConfig.tiny(), kernels="fused")
    with pytest.raises(ValueError, match="unknown kernels 'turbo'"):
        ViT(ViTConfig.tiny(), kernels="turbo")
    with pytest.raises(ValueError, match=r"choose one of \['auto', 'numba', 'fused', 'capturable', 'fast', 'reference'\]"):
        get_kernels("turbo")
    import types
    with pytest.raises(ValueError, match="a KernelSet"):
        get_kernels(types.SimpleNamespace(linear_forward=print))
    m = ViT(ViTConfig.tiny(), kernels="reference")
    assert all(layer.kernels is REFERENCE for _, layer in m.named_layers())
    assert [kernels_name(get_kernels(k)) for k in ("fast", "reference")] == ["fast", "reference"]


def test_a_layer_built_alone_runs_the_reference():
    from npvit.layers import GELU, LayerNorm, Linear, MultiHeadSelfAttention
    for layer in (Linear(3, 4), LayerNorm(4), GELU(), MultiHeadSelfAttention(12, 3)):
        assert all(sub.kernels is REFERENCE for _, sub in layer.named_layers())


def test_auto_picks_numba_on_the_cpu_where_numba_is_installed(monkeypatch):
    import npvit.ops as ops
    assert ops.auto_kernels("cupy") == "fused"                      # the numba loops are CPU code
    monkeypatch.setattr(ops, "find_spec", lambda name: None)
    assert kernels_name(get_kernels("auto")) == "fast"              # no Numba: fast, and the start line says so
    pytest.importorskip("numba")
    monkeypatch.undo()
    assert kernels_name(get_kernels("auto")) == "numba" == kernels_name(ViT(ViTConfig.tiny()).kernels)


def test_numba_kernels_say_what_they_need(monkeypatch):
    with pytest.raises(ValueError, match="CPU loops for the numpy backend, not 'cupy'"):
        get_kernels("numba", "cupy")
    import sys

    monkeypatch.delitem(sys.modules, "npvit.ops.numba_cpu", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)                # as if Numba were not installed
    with pytest.raises(ValueError, match=r"need Numba, which is not installed \(pip install numba"):
        get_kernels("numba")


RENAMED_FILE = '''"""The reference set under another name: what adding a kernel set takes (its file and one registry line)."""
from .contract import PRIMITIVE_NAMES
from .kernelset import KernelSet
from .reference import REFERENCE

RENAMED = KernelSet("renamed", backends=("numpy", "cupy"), primitives={n: getattr(REFERENCE, n) for n in PRIMITIVE_NAMES})
'''


def test_a_new_kernel_set_is_its_own_file_and_one_registry_line(tmp_path):
    """In a copy of the checkout: add ops/renamed.py and one line of REGISTRY, and nothing else; the set is then a
    choice of --kernels and of get_kernels, and the suite's kernel matrix runs it (collected and passing)."""
    import shutil
    import subprocess
    import sys
    from tests.cifar_fixtures import REPO
    for part in ("npvit", "tests", "scripts"):
        shutil.copytree(os.path.join(REPO, part), tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path)
    (tmp_path / "npvit" / "ops" / "renamed.py").write_text(RENAMED_FILE)
    registry = tmp_path / "npvit" / "ops" / "__init__.py"
    text = registry.read_text()
    line = '    Registered("reference", '
    assert text.count(line) == 1
    registry.write_text(text.replace(line, '    Registered("renamed", "npvit.ops.renamed:RENAMED", ("numpy", "cupy"), '
                                           '"the reference, renamed"),\n' + line))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = lambda *cmd: subprocess.run([sys.executable, *cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
    p = run("-c", "import npvit, npvit.ops as o; print(npvit.__file__); print(o.NAMED); "
                  "print(o.get_kernels('renamed').name)")
    assert p.returncode == 0, p.stderr
    where, named, name = p.stdout.split("\n")[:3]
    assert where.startswith(str(tmp_path)) and "'renamed'" in named and name == "renamed"
    p = run("scripts/train.py", "--help")
    assert "{auto,numba,fused,capturable,fast,renamed,reference}" in p.stdout.replace("\n", "").replace(" ", ""), p.stdout
    p = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ops/test_kernel_sets.py", "-k", "renamed and numpy")
    assert p.returncode == 0, p.stdout[-3000:]
    passed = int(p.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 20, p.stdout[-500:]
