"""The batch stream (npvit/training/batches.py): the order is a function of (seed, epoch), every image is seen once
an epoch, ranks split each global batch between them, and augmentation does what its record says."""
import numpy as np

from npvit import augment as aug
from npvit.distributed import SingleProcess
from npvit.training.batches import Augmentation, Batches, Stream, augment_batch


class Rank(SingleProcess):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def stream(n=10, batch_size=4, seed=3, augmentation=Augmentation(), world=SingleProcess()):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    y = np.arange(n)                            # the label of an image is its index: which rows were taken shows
    norm = aug.normalizer(np, (0.5,) * 3, (0.5,) * 3, np.dtype(np.float64))
    return Batches(x, y, batch_size, seed, augmentation, norm, np.dtype(np.float64), world)


def test_an_epoch_sees_every_image_once_in_an_order_drawn_from_seed_and_epoch():
    b = stream()
    assert b.steps == 3                                               # 10 images, batches of 4: the last has 2
    order = b.order(0)
    seen = np.concatenate([b.batch(order, 0, i)[2] for i in range(b.steps)])
    assert sorted(seen) == list(range(10)) and [b.batch(order, 0, i)[3] for i in range(3)] == [4, 4, 2]
    assert np.array_equal(order, stream().order(0))                   # the same seed and epoch: the same order
    assert not np.array_equal(order, b.order(1))                      # another epoch: another order
    assert not np.array_equal(order, stream(seed=4).order(0))
    assert b.seed(2, 5, Stream.AUGMENT) != b.seed(2, 5, Stream.DROPOUT) != b.seed(2, 6, Stream.DROPOUT)


def test_ranks_take_disjoint_shares_of_the_same_global_batch():
    ranks = [stream(world=Rank(r, 2)) for r in range(2)]
    order = ranks[0].order(0)
    assert np.array_equal(order, ranks[1].order(0))                   # every rank draws the same order
    for i in range(3):
        parts = [b.batch(order, 0, i) for b in ranks]
        labels = [p[2] for p in parts]
        assert not set(labels[0]) & set(labels[1])
        assert sorted(np.concatenate(labels)) == sorted(stream().batch(order, 0, i)[2])
        assert parts[0][3] == parts[1][3] == len(np.concatenate(labels))     # both know the global batch size
    assert ranks[0].seed(0, 0, Stream.AUGMENT) != ranks[1].seed(0, 0, Stream.AUGMENT)   # their own streams


def test_augmentation_does_what_its_record_says():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    y = np.arange(6) % 3
    norm = aug.normalizer(np, (0.5,) * 3, (0.5,) * 3, np.dtype(np.float64))
    run = lambda a, seed=0: augment_batch(a, images, y, norm, np.dtype(np.float64), np.random.default_rng(seed),
                                          np.random.default_rng(seed))
    x, t = run(Augmentation("none"))
    assert np.array_equal(x, aug.normalize(images, *norm, np.dtype(np.float64))) and t is y
    x, t = run(Augmentation("flip"), seed=1)
    flipped = x != aug.normalize(images, *norm, np.dtype(np.float64))
    assert flipped.any() and t is y
    assert np.array_equal(run(Augmentation("crop_flip"), 5)[0], run(Augmentation("crop_flip"), 5)[0])
    x, t = run(Augmentation("none", mixup=1.0, num_classes=3))
    assert t.shape == (6, 3) and np.allclose(t.sum(axis=1), 1.0)      # soft targets
