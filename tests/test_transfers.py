"""A training step moves nothing between host and device: the data goes over once, augmentation
runs on the device, and only logged scalars come back (per log interval and per epoch).

On NumPy nothing physically moves, so this counts the requests, all of which go through
npvit.backend (npvit.backend.TRANSFERS); the same code on CuPy pays a copy and a sync for each.
"""
import pytest

from npvit import backend
from npvit.training.console import Console
from npvit.training.settings import build_config
from npvit.training.run import train
from tests.cifar_fixtures import write_fake_cifar


def transfers_of_one_epoch(data, out, train_limit, **kw):
    cfg = build_config(overrides=dict(
        data_dir=str(data), out_dir=str(out), epochs=1, batch_size=16, train_limit=train_limit, test_limit=16,
        hidden_size=12, num_attention_heads=3, intermediate_size=24, num_hidden_layers=1, progress=False,
        mixup=0.2, cutmix=1.0, grad_clip=1.0, hidden_dropout_prob=0.1, **kw))
    before = backend.TRANSFERS.copy()
    train(cfg, console=Console(log=lambda *a: None))
    after = backend.TRANSFERS.copy()
    after.subtract(before)
    return dict(after)


@pytest.mark.parametrize("augment", ["crop_flip", "article"])
def test_transfers_do_not_grow_with_the_number_of_steps(tmp_path, augment):
    data = write_fake_cifar(tmp_path / "data", n_per_batch=20)
    two = transfers_of_one_epoch(data, tmp_path / "a", 32, augment=augment)     # 2 steps
    six = transfers_of_one_epoch(data, tmp_path / "b", 96, augment=augment)     # 6 steps
    assert two == six, f"per-step transfers: 2 steps {two}, 6 steps {six}"
    # what an epoch costs: the data and the permutation go over once; the epoch's loss and
    # accuracy and the test metrics come back once; checkpoints copy the weights to the host
    assert two["to_host"] >= 4 and two["to_device"] >= 5


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["crop_flip", "article"])
def test_a_gpu_training_step_never_waits_for_the_device(augment):
    """On CuPy: augmentation, forward, backward, clipping, AdamW and the EMA of several steps run with
    device synchronisation forbidden (cupyx raises DeviceSynchronized at any read-back or sync)."""
    import cupy
    import cupyx
    import numpy as np

    from npvit import ViT
    from npvit.augment import normalizer
    from npvit.ema import EMA
    from npvit.optim import AdamW
    from npvit.training.batches import augment_batch
    from npvit.training.step import train_step

    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    cfg = build_config(overrides=dict(augment=augment, mixup=0.2, cutmix=1.0, trivial_augment=True, backend="cupy",
                                      threads=1, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    model = ViT(cfg.model, backend="cupy")
    opt, ema = AdamW(model, lr=1e-3), EMA(model, 0.99)
    rng = np.random.default_rng(0)
    images = cupy.asarray(rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8))
    labels = cupy.asarray(rng.integers(0, 10, 64))
    norm = normalizer(cupy, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), model.dtype)
    before = model.flat.params.copy()
    with cupyx.allow_synchronize(False):
        for step in range(3):
            x, target = augment_batch(cfg.augmentation, images, labels, norm, model.dtype, cupy.random.default_rng(step),
                                      np.random.default_rng(step))
            train_step(model, opt, x, target, labels, 0.1, 1.0)
            ema.update()
    assert float(abs(model.flat.params - before).max()) > 0
