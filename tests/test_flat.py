"""Flat parameter and gradient buffers: every parameter a view into one array, every gradient into another,
so zero_grad is one fill, an optimiser step a handful of array operations, clipping one norm."""
import copy

import numpy as np
import pytest
import torch

from npvit import ViT, softmax_cross_entropy
from npvit.config import ViTConfig
from npvit.flat import FlatParameters, FlatWindow
from npvit.layers import GELU, MLP, LayerNorm, Linear
from npvit.optim import SGD, AdamW, clip_grad_norm

SMALL = ViTConfig.tiny().to_dict()


def backward_once(model, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 3, 8, 8)).astype(model.dtype)
    _, d = softmax_cross_entropy(model(x), rng.integers(0, 5, 3))
    model.backward(d)


def assert_views(model):
    for name, p in model.parameters().items():
        assert np.shares_memory(p, model.flat.params), f"{name} is not a view of model.flat.params"
    for name, g in model.gradients().items():
        assert np.shares_memory(g, model.flat.grads), f"gradient {name} is not a view of flat_grads"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parameters_and_gradients_are_views_of_two_buffers(dtype):
    model = ViT(SMALL, dtype=dtype)
    assert model.flat.params.dtype == model.flat.grads.dtype == np.dtype(dtype)
    assert model.flat.params.size == model.num_parameters() and model.flat.params.flags.c_contiguous
    assert_views(model)
    backward_once(model)
    assert np.abs(model.flat.grads).sum() > 0
    np.testing.assert_array_equal(np.concatenate([g.ravel() for g in model.gradients().values()]), model.flat.grads)
    model.zero_grad()
    assert not model.flat.grads.any()
    before = model.flat.params.copy()
    model.load_state_dict(ViT(SMALL, dtype=dtype, seed=9).state_dict())      # copied into the views
    assert_views(model)
    assert not np.array_equal(before, model.flat.params)


def test_deepcopy_and_astype_keep_the_views():
    model = ViT(SMALL)
    twin = copy.deepcopy(model)
    assert twin.flat.params is not model.flat.params
    assert_views(twin)
    twin.astype("float64")
    assert twin.flat.params.dtype == np.float64
    assert_views(twin)
    np.testing.assert_allclose(twin.flat.params, model.flat.params, rtol=1e-7)


class Counting(np.ndarray):
    """An ndarray that counts the NumPy operations (ufunc calls) it takes part in."""
    calls = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        Counting.calls += 1
        plain = [i.view(np.ndarray) if isinstance(i, Counting) else i for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, Counting) else o for o in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)


@pytest.mark.parametrize("make", [lambda m: AdamW(m, lr=1e-3, weight_decay=0.05),
                                  lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-4)])
def test_an_optimiser_step_costs_the_same_few_operations_for_any_number_of_parameter_arrays(make):
    counts = []
    for layers in (1, 6):
        model = ViT({**SMALL, "num_hidden_layers": layers}, dtype="float64")
        backward_once(model)
        model.flat.params = model.flat.params.view(Counting)      # same memory, counted
        model.flat.grads = model.flat.grads.view(Counting)
        opt = make(model)
        for _ in range(2):                                        # the second step has all its state
            Counting.calls = 0
            opt.step()
        counts.append(Counting.calls)
    assert counts[0] == counts[1] and 3 < counts[0] <= 16, f"operations per step: {counts}"


def test_groups_with_their_own_learning_rate_match_torch():
    model = ViT(SMALL, dtype="float64", seed=0)
    ref = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    names = list(ref)
    fast, slow = names[::2], names[1::2]
    opt = AdamW(model, lr=1e-2, weight_decay=0.1, param_groups=[{"params": fast}, {"params": slow, "lr": 1e-3,
                                                                                      "weight_decay": 0.0}])
    topt = torch.optim.AdamW([{"params": [ref[k] for k in fast]},
                              {"params": [ref[k] for k in slow], "lr": 1e-3, "weight_decay": 0.0}],
                             lr=1e-2, weight_decay=0.1)
    for seed in range(3):
        model.zero_grad()
        backward_once(model, seed)
        for k, g in model.gradients().items():
            ref[k].grad = torch.tensor(g)
        opt.step()
        topt.step()
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, ref[k].detach().numpy(), rtol=1e-10, atol=1e-13, err_msg=k)


def test_clipping_the_flat_buffer_is_clipping_every_gradient():
    a, b = ViT(SMALL, dtype="float64"), ViT(SMALL, dtype="float64")
    backward_once(a)
    backward_once(b)
    na, nb = clip_grad_norm(a.flat.grads, 0.01), clip_grad_norm(b.gradients(), 0.01)
    assert float(na) == pytest.approx(float(nb), rel=1e-12) and float(na) > 0.01
    np.testing.assert_allclose(a.flat.grads, b.flat.grads, rtol=1e-12)
    assert np.linalg.norm(a.flat.grads) == pytest.approx(0.01, rel=1e-4)


def test_casting_the_model_casts_everything_of_its_layout():
    """The flat buffers' owner casts the parameters, the gradients, the optimiser's moments and per-group
    vectors and the moving average together: the optimiser and the average go on in the new dtype."""
    from npvit.ema import EMA

    model = ViT(SMALL, seed=1)
    names = list(model.parameters())
    opt = AdamW(model, lr=1e-2, weight_decay=0.1, param_groups=[{"params": names[::2]},
                                                               {"params": names[1::2], "lr": 1e-3}])
    ema = EMA(model, 0.9)
    backward_once(model)
    opt.step()
    ema.update()
    before = {k: v.copy() for k, v in opt.state.items()}
    model.astype("float64")
    assert model.flat.params.dtype == model.flat.grads.dtype == ema.average.dtype == np.float64
    assert all(v.dtype == np.float64 for v in opt.state.values()) and opt.lr().dtype == np.float64
    for k, v in before.items():
        np.testing.assert_array_equal(opt.state[k], v.astype(np.float64))
    assert_views(model)
    p = model.flat.params.copy()
    model.zero_grad()
    backward_once(model, seed=1)
    opt.step()
    ema.update()
    assert model.flat.params.dtype == np.float64 and not np.array_equal(model.flat.params, p)
    assert_views(model)


def test_optimiser_errors():
    model = ViT(SMALL)
    with pytest.raises(ValueError, match="may set their own"):
        AdamW(model, param_groups=[{"params": list(model.parameters()), "betas": (0.5, 0.5)}])


def test_every_layer_is_flat_from_birth_and_its_optimiser_steps_the_buffer():
    layer = Linear(4, 3)
    assert isinstance(layer.flat, FlatParameters)
    assert np.shares_memory(layer.params["weight"], layer.flat.params)
    opt = SGD(layer, lr=0.1)
    layer.forward(np.ones((2, 4)))
    layer.backward(np.ones((2, 3)))
    w = layer.params["weight"].copy()
    opt.step()
    np.testing.assert_allclose(layer.params["weight"], w - 0.1 * 2.0)
    with pytest.raises(ValueError, match="no parameters"):
        GELU().flatten()
    assert GELU().flat is None and GELU().astype(np.float32).zero_grad() is None    # nothing to hold
    assert LayerNorm(3).flat.params.tolist() == [1, 1, 1, 0, 0, 0]


def test_the_outermost_layer_owns_the_buffers_and_its_parts_hold_windows():
    mlp = MLP(6, 10)
    assert isinstance(mlp.flat, FlatParameters) and isinstance(mlp.dense_2.flat, FlatWindow)
    assert np.shares_memory(mlp.dense_2.flat.params, mlp.flat.params)
    assert mlp.dense_2.flat.params.size == 10 * 6 + 6
    np.testing.assert_array_equal(mlp.dense_2.flat.params[:60], mlp.dense_2.params["weight"].ravel())
    mlp.flat.grads.fill(1.0)
    mlp.dense_2.zero_grad()                                     # a part zeros its own window only
    assert not mlp.dense_2.flat.grads.any() and mlp.dense_1.flat.grads.all()


def test_assigning_a_parameter_writes_into_the_buffer():
    layer = Linear(4, 3)
    w = np.arange(12.0).reshape(3, 4)
    layer.params["weight"] = w                                  # copied into its view: the buffer holds it
    np.testing.assert_array_equal(layer.flat.params[:12], w.ravel())
    assert np.shares_memory(layer.params["weight"], layer.flat.params)
    with pytest.raises(ValueError, match=r"'weight' has shape \(3, 4\); got an array of shape \(4, 3\)"):
        layer.params["weight"] = w.T
    with pytest.raises(ValueError, match="'scale' is not a parameter of this layer"):
        layer.params["scale"] = np.ones(3)


def test_a_part_cannot_change_the_buffers_but_a_copy_of_it_can():
    mlp = MLP(6, 10)
    for change, doing in ((lambda l: l.astype(np.float32), "cast"), (lambda l: SGD(l, lr=0.1), "optimise")):
        with pytest.raises(ValueError, match=f"{doing} a Linear that is part of a bigger layer tree: .* \\(MLP\\)"):
            change(mlp.dense_1)
    part = copy.deepcopy(mlp.dense_1)                           # its own buffers, as if built alone
    assert isinstance(part.flat, FlatParameters) and not np.shares_memory(part.flat.params, mlp.flat.params)
    np.testing.assert_array_equal(part.params["weight"], mlp.dense_1.params["weight"])
    assert part.astype(np.float32).params["weight"].dtype == np.float32
    whole = copy.deepcopy(mlp)                                  # a whole tree: its parts window the copy's buffers
    assert np.shares_memory(whole.dense_1.flat.params, whole.flat.params)
    assert not np.shares_memory(whole.flat.params, mlp.flat.params)
