"""One training step and the evaluation (npvit/training/step.py): micro-batches give the same update as the whole
batch, a rank's share weighted by the global batch adds up to the whole, and the evaluation scores every image."""
import numpy as np
import pytest

from npvit import ViT, ViTConfig
from npvit import augment as aug
from npvit.distributed import SingleProcess
from npvit.optim import AdamW
from npvit.training.step import Evaluation, loss_and_accuracy, train_step


def model_and_batch(seed=0):
    model = ViT(ViTConfig.tiny(), dtype="float64", seed=seed, kernels="reference")
    rng = np.random.default_rng(1)
    return model, AdamW(model, lr=1e-2), rng.standard_normal((8, 3, 8, 8)), rng.integers(0, 5, 8)


@pytest.mark.parametrize("micro_batch", [1, 3, 8])
def test_micro_batches_take_the_same_step_as_the_whole_batch(micro_batch):
    whole, opt, x, y = model_and_batch()
    loss, correct = train_step(whole, opt, x, y, y, label_smoothing=0.1, grad_clip=1.0)
    chunked, opt2, _, _ = model_and_batch()
    loss2, correct2 = train_step(chunked, opt2, x, y, y, label_smoothing=0.1, grad_clip=1.0, micro_batch=micro_batch)
    assert loss2 == pytest.approx(loss, rel=1e-12) and correct2 == correct
    np.testing.assert_allclose(chunked.flat.params, whole.flat.params, rtol=1e-10, atol=1e-10)   # weights of about 0.1-1; AdamW amplifies round-off near 0


def test_two_shares_weighted_by_the_global_batch_add_up_to_it():
    """What two MPI ranks do, in one process: each runs its half weighted by 8, reduce_grads sums them."""
    whole, opt, x, y = model_and_batch()
    train_step(whole, opt, x, y, y)
    halves = [model_and_batch() for _ in range(2)]
    grads = []
    for (m, _, _, _), rows in zip(halves, (slice(0, 5), slice(5, 8))):
        m.zero_grad()
        train_step(m, AdamW(m, lr=0.0), x[rows], y[rows], y[rows], global_batch=8)   # lr 0: keep its gradient
        grads.append(m.flat.grads.copy())
    m, opt3, _, _ = halves[0]
    m.load_state_dict(model_and_batch()[0].state_dict())
    train_step(m, opt3, x[0:5], y[0:5], y[0:5], global_batch=8, reduce_grads=lambda g: g.__setitem__(..., sum(grads)))
    np.testing.assert_allclose(m.flat.params, whole.flat.params, rtol=1e-10, atol=1e-10)   # weights of about 0.1-1; AdamW amplifies round-off near 0


def test_the_evaluation_scores_every_image_in_batches_of_any_size():
    model, _, _, _ = model_and_batch()
    rng = np.random.default_rng(2)
    x_u8, y = rng.integers(0, 256, (11, 3, 8, 8), dtype=np.uint8), rng.integers(0, 5, 11)
    norm = aug.normalizer(np, (0.5,) * 3, (0.5,) * 3, model.dtype)
    loss, acc, preds = loss_and_accuracy(model, x_u8, y, *norm, batch_size=11)
    for batch_size in (1, 4):
        loss_b, acc_b, preds_b = loss_and_accuracy(model, x_u8, y, *norm, batch_size=batch_size)
        assert loss_b == pytest.approx(loss, rel=1e-12) and acc_b == acc and np.array_equal(preds_b, preds)
    assert acc == pytest.approx(float((preds == y).mean())) and model.training      # back in training mode
    scored = Evaluation(x_u8, y, norm, 4, False, SingleProcess(), np).score(model)
    assert scored[0] == pytest.approx(loss, rel=1e-12) and scored[1] == pytest.approx(acc)
