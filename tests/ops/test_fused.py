"""The fused set's own pieces (npvit/ops/cupy_fused.py) on a GPU: its AdamW kernel over the flat buffer.
(That its primitives and composites compute the reference's function at every size:
tests/ops/test_kernel_sets.py.)"""
import pytest

from npvit.backend import get_xp
from npvit.ops.reference import REFERENCE
from tests.helpers import rel_err
from tests.ops.test_kernel_sets import random_arrays
from tests.tolerances import KERNEL_RTOL


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("per_element", [False, True], ids=["scalars", "group-vectors"])
def test_fused_adamw_equals_the_reference(dtype, per_element):
    from npvit.ops.cupy_fused import FUSED

    xp = get_xp("cupy")
    r, rng = random_arrays(xp, dtype)
    n = 10_001
    state = {name: [r(n), xp.zeros(n, dtype), xp.zeros(n, dtype)] for name in ("reference", "fused")}
    state["fused"] = [a.copy() for a in state["reference"]]
    lr = (xp.abs(r(n)) * 1e-2) if per_element else xp.asarray(3e-3, dtype=dtype)
    wd = (xp.abs(r(n)) * 0.1) if per_element else 0.05
    b1, b2, eps = 0.9, 0.999, 1e-8
    p_initial = state["reference"][0].copy()
    for t in range(1, 4):
        g = r(n)
        args = (lr, wd, b1, b2, eps, xp.asarray(1 / (1 - b1 ** t), dtype=dtype),
                xp.asarray(1 / (1 - b2 ** t) ** 0.5, dtype=dtype))
        REFERENCE.adamw_update(*state["reference"][:1], g, *state["reference"][1:], *args)
        FUSED.adamw_update(*state["fused"][:1], g, *state["fused"][1:], *args)
    assert rel_err(state["reference"][0], p_initial) > 1e-4   # the steps moved the weights
    for name, a, b in zip(("p", "m", "v"), state["fused"], state["reference"]):
        assert rel_err(a, b) < KERNEL_RTOL[dtype], (name, rel_err(a, b))
