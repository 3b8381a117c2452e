"""A training step moves nothing between host and device: the data goes over once, augmentation
runs on the device, and only logged scalars come back (per log interval and per epoch).

On NumPy nothing physically moves, so this counts the requests, all of which go through
npvit.backend (npvit.backend.TRANSFERS); the same code on CuPy pays a copy and a sync for each.
"""
import pytest

from npvit import backend
from npvit.train import build_config, train
from tests.cifar_fixtures import write_fake_cifar


def transfers_of_one_epoch(data, out, train_limit, **kw):
    cfg = build_config(overrides=dict(
        data_dir=str(data), out_dir=str(out), epochs=1, batch_size=16, train_limit=train_limit, test_limit=16,
        hidden_size=12, num_attention_heads=3, intermediate_size=24, num_hidden_layers=1, progress=False,
        mixup=0.2, cutmix=1.0, grad_clip=1.0, hidden_dropout_prob=0.1, **kw))
    before = backend.TRANSFERS.copy()
    train(cfg, log=lambda *a: None)
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
