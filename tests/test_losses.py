import numpy as np
import pytest
import torch

from npvit import softmax_cross_entropy
from npvit.backend import get_xp, to_device, to_numpy
from npvit.gradcheck import check_gradients
from tests.tolerances import GRADCHECK_TOL, TORCH_RTOL
from tests.helpers import rel_err, to_torch


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("B,K", [(4, 10), (1, 3), (7, 2)])
def test_gradcheck(B, K, smoothing, xp):
    rng = np.random.default_rng(0)
    logits = to_device(3 * rng.standard_normal((B, K)), xp)
    labels = to_device(rng.integers(0, K, B), xp)
    _, dlogits = softmax_cross_entropy(logits, labels, smoothing)
    check_gradients(lambda: softmax_cross_entropy(logits, labels, smoothing)[0], {"logits": logits},
                    {"logits": dlogits}).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_torch_cross_entropy(dtype, smoothing, backend):
    rng = np.random.default_rng(0)
    logits, labels = 4 * rng.standard_normal((16, 10)), rng.integers(0, 10, 16)
    xp = get_xp(backend)
    loss, dlogits = softmax_cross_entropy(to_device(logits.astype(dtype), xp), to_device(labels, xp), smoothing)
    lt = to_torch(logits, dtype, backend, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(lt, torch.tensor(labels, device=lt.device))
    ref.backward()
    assert loss.dtype == dlogits.dtype == np.dtype(dtype)
    assert rel_err(to_numpy(loss), ref.item()) < TORCH_RTOL[dtype]
    assert rel_err(to_numpy(dlogits), lt.grad.cpu().numpy()) < TORCH_RTOL[dtype]


def test_stable_for_huge_logits():
    loss, d = softmax_cross_entropy(np.array([[1000.0, 0.0], [0.0, -1000.0]]), np.array([1, 1]))
    assert np.isfinite(loss) and np.isfinite(d).all()
    assert abs(float(loss) - 1000.0 / 2 - 1000.0 / 2) < 1e-9


def test_bad_input_is_a_clear_error():
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        softmax_cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        softmax_cross_entropy(logits, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integers"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels must be \(B,\)"):
        softmax_cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"logits must be \(B, K\)"):
        softmax_cross_entropy(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]), label_smoothing=1.5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_match_torch_and_onehot(smoothing):
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((6, 5))
    q = rng.dirichlet(np.ones(5), size=6)
    loss, d = softmax_cross_entropy(logits, q, smoothing)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(lt, torch.tensor(q))
    ref.backward()
    assert rel_err(loss, ref.item()) < 1e-12 and rel_err(d, lt.grad.numpy()) < 1e-12
    labels = rng.integers(0, 5, 6)
    hard = softmax_cross_entropy(logits, labels, smoothing)
    soft = softmax_cross_entropy(logits, np.eye(5)[labels], smoothing)
    assert rel_err(soft[0], hard[0]) < 1e-12 and rel_err(soft[1], hard[1]) < 1e-12
    check_gradients(lambda: softmax_cross_entropy(logits, q, smoothing)[0], {"logits": logits},
                    {"logits": d}).assert_ok(GRADCHECK_TOL)
