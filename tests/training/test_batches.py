"""The batch stream (npvit/training/batches.py): the order is a function of (seed, epoch), every image is seen once
an epoch, ranks split each global batch between them, and augmentation does what its record says."""
import numpy as np
import pytest

from npvit import ViT
from npvit import augment as aug
from npvit.config import ViTConfig
from npvit.distributed import SingleProcess
from npvit.parallel import DataParallel
from npvit.training.batches import Augmentation, Batches, RowsOf, Stream, augment_batch


class Rank(SingleProcess):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def stream(n=10, batch_size=4, seed=3, augmentation=Augmentation(), world=SingleProcess(), parallel=None):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    y = np.arange(n)                            # the label of an image is its index: which rows were taken shows
    norm = aug.normalizer(np, (0.5,) * 3, (0.5,) * 3, np.dtype(np.float64))
    return Batches(x, y, batch_size, seed, augmentation, norm, np.dtype(np.float64), world, parallel)


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


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("augmentation", [Augmentation("crop_flip", trivial_augment=True, trivial_augment_prob=0.5),
                                          Augmentation("article", trivial_augment=True), Augmentation("flip")],
                         ids=["fast80", "article+ta", "flip"])
def test_a_batch_augmented_in_parts_on_the_threads_is_the_batch_augmented_whole(augmentation, threads):
    """Each thread augments its rows with the whole batch's draws cut to them (RowsOf): bit for bit the same batch,
    so runs and checkpoints made before augmentation ran on the threads continue exactly. 10 images in batches of 4
    (the last of 2) and of 7 (the last of 3): parts of 1, 2 and 3 rows."""
    net = DataParallel(ViT(ViTConfig.tiny()), threads)
    for batch_size in (4, 7):
        whole = stream(batch_size=batch_size, augmentation=augmentation)
        parts = stream(batch_size=batch_size, augmentation=augmentation, parallel=net)
        assert parts.parallel is net and whole.parallel is None
        for epoch in (0, 1):
            order = whole.order(epoch)
            for i in range(whole.steps):
                a, b = whole.batch(order, epoch, i), parts.batch(order, epoch, i)
                assert np.array_equal(a[0], b[0]) and a[0].dtype == b[0].dtype
                assert all(np.array_equal(u, v) for u, v in zip(a[1:3], b[1:3])) and a[3] == b[3]


def test_mixup_and_cutmix_batches_are_augmented_whole():
    """They pair images across the whole batch: no parts, even with threads."""
    net = DataParallel(ViT(ViTConfig.tiny()), 2)
    for a in (Augmentation("crop_flip", mixup=0.8, num_classes=10), Augmentation("none", cutmix=1.0, num_classes=10)):
        assert stream(augmentation=a, parallel=net).parallel is None
    assert stream(augmentation=Augmentation("none"), parallel=net).parallel is None    # nothing but normalising


def test_rows_of_a_batch_draw_the_batchs_numbers_and_refuse_other_shapes():
    whole = np.random.default_rng(7)
    full = (whole.integers(0, 9, size=10), whole.random(10), whole.uniform(1, 2, size=(3, 10)))
    part = RowsOf(np.random.default_rng(7), slice(4, 7), 10)
    assert np.array_equal(part.integers(0, 9, size=3), full[0][4:7])
    assert np.array_equal(part.random(3), full[1][4:7])
    assert np.array_equal(part.uniform(1, 2, size=(3, 3)), full[2][:, 4:7])
    with pytest.raises(ValueError, match="not one per image of these 3 rows"):
        part.random(10)
    with pytest.raises(ValueError, match="not one per image"):
        part.random(())
