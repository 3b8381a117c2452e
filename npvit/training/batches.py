"""The batch stream of a training run: which images, in which order, augmented how, with which randomness.

Everything random in a step comes from a named stream whose seed is derived from (seed, epoch,
step, stream), and on MPI runs the rank: the same step draws the same numbers however often a
run stopped and resumed, so a resumed run continues bit for bit.

    order(epoch)      a permutation of the training images from (seed, epoch)
    batch(epoch, i)   this process's rows of global batch i, augmented on the model's device
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import augment as aug
from ..backend import default_rng, get_array_module, seed_for, to_device
from ..data import Dataset, from_torchvision, load_dataset
from ..distributed import shard
from ..errors import ConfigError, DataError
from ..trivial_augment import trivial_augment


class Stream(enum.IntEnum):
    """The random streams of one step (their numbers are part of every checkpoint's future: never renumber)."""
    AUGMENT = 1       # crops, flips, TrivialAugment, mixup/cutmix masks: on the model's device
    DROPOUT = 2       # dropout and stochastic-depth masks (the model's own generators, reseeded per step)
    MIX = 3           # mixup/cutmix mixing weights: on the host


# -- the data a run trains and evaluates on ----------------------------------------------------------
@dataclass(frozen=True)
class DataSource:
    """Which images a run reads: ``dataset`` (cifar10 or folder) from ``data_dir`` (CIFAR-10 downloaded there
    if absent and ``download``), the first ``train_limit`` / ``test_limit`` of them (None: all), with the last
    ``val_split`` training images held out for evaluation (0: evaluate on the test set)."""
    dataset: str = "cifar10"
    data_dir: str = "./data"
    download: bool = True
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    val_split: int = 0


def training_data(source: DataSource, config, given=None) -> Dataset:
    """The dataset ``source`` names (or ``given``: a Dataset, or a pair of torchvision dataset objects, read
    into arrays here once), checked against the model's ``config`` (a ViTConfig), limited, and split: with
    ``val_split`` N the last N training images become the evaluation set (the test set goes unused)."""
    C, S = config.num_channels, config.image_size
    if isinstance(given, Dataset):
        data = given
    elif given is not None:
        data = from_torchvision(*given)
    else:
        try:
            data = load_dataset(source.dataset, source.data_dir, S, C, source.download)
        except DataError as e:
            if source.dataset == "cifar10" and not source.download and "not found" in str(e):
                raise DataError(f"{e} (or drop --no-download to download it there)") from None
            raise
    if data.x_train.shape[1:] != (C, S, S):
        raise ConfigError(f"the data's images are {data.x_train.shape[1:]} (C, H, W) but the model expects "
                          f"num_channels={C}, image_size={S}")
    if len(data.classes) != config.num_classes:
        raise ConfigError(f"the data has {len(data.classes)} classes but num_classes={config.num_classes}")
    data = data.limit(source.train_limit, source.test_limit)
    n = source.val_split
    if n:
        if n >= len(data.y_train):
            raise ConfigError(f"val_split {n} leaves no training images (there are {len(data.y_train)})")
        data = Dataset(data.x_train[:-n], data.y_train[:-n], data.x_train[-n:], data.y_train[-n:], data.classes)
    return data


def norm_stats(normalize, data):
    """The (mean, std) per channel the images are normalised with: ``normalize`` "half" is the article's 0.5,
    "dataset" the training images' own."""
    if normalize == "half":
        channels = data.x_train.shape[1]
        return [0.5] * channels, [0.5] * channels
    return data.channel_stats()


# -- augmentation ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """How a training batch is augmented, in this order: TrivialAugment on the pixels (``trivial_augment``, each
    image with probability ``trivial_augment_prob``); then ``augment`` on the normalised images (none, flip,
    crop_flip with ``crop_padding``, or article: RandomResizedCrop over ``rrc_scale`` and a flip); then mixup
    and cutmix (alphas ``mixup``, ``cutmix``; 0 is off) into soft targets over ``num_classes``."""
    augment: str = "none"
    crop_padding: int = 4
    rrc_scale: tuple = (0.8, 1.0)
    trivial_augment: bool = False
    trivial_augment_prob: float = 1.0
    mixup: float = 0.0
    cutmix: float = 0.0
    num_classes: int = 10


def augment_batch(augmentation: Augmentation, images_u8, y, norm, dtype, rng, host_rng):
    """uint8 images (B, C, H, W) and labels y (B,) -> normalised augmented x and targets (labels, or soft
    targets with mixup/cutmix). ``norm``: the (shift, scale) pair of aug.normalizer."""
    a = augmentation
    if a.trivial_augment:               # on the pixels, in [0, 1]; then the rest on the normalised images
        pixels = trivial_augment(images_u8.astype(dtype) * dtype.type(1 / 255), rng, prob=a.trivial_augment_prob)
        pixels *= dtype.type(255)
        x = aug.normalize(pixels, *norm, dtype)
    else:
        x = aug.normalize(images_u8, *norm, dtype)
    if a.augment == "crop_flip":
        x = aug.random_crop(x, a.crop_padding, rng)
    if a.augment == "article":
        x = aug.random_resized_crop(x, rng, scale=a.rrc_scale)
    if a.augment != "none":
        x = aug.random_flip(x, rng)
    if a.mixup or a.cutmix:
        return aug.mixup_cutmix(x, y, a.num_classes, rng, host_rng, a.mixup, a.cutmix)
    return x, y


class RowsOf:
    """The draws a whole batch of ``B`` images makes from ``generator``, cut to the images ``rows`` (a slice):
    each draw of size (..., b), b the rows' count, is drawn at (..., B) and sliced, so that a part of a batch
    augmented with it gets exactly the numbers it gets in the whole batch. Every augmentation draws one number
    per image (or ``attempts`` per image) before it touches a pixel; a draw of any other shape is refused."""

    def __init__(self, generator, rows, B):
        self.generator, self.rows, self.B = generator, rows, B
        self.b = len(range(*rows.indices(B)))

    def _drawn(self, method, *args, size):
        size = (size,) if isinstance(size, int) else tuple(size)
        if not size or size[-1] != self.b:
            raise ValueError(f"a draw of size {size} is not one per image of these {self.b} rows")
        return getattr(self.generator, method)(*args, size=size[:-1] + (self.B,))[..., self.rows]

    def integers(self, low, high, size):
        return self._drawn("integers", low, high, size=size)

    def random(self, size):
        return self._drawn("random", size=size)

    def uniform(self, low, high, size):
        return self._drawn("uniform", low, high, size=size)


# -- the stream ------------------------------------------------------------------------------------------
class Batches:
    """``Batches(x_train, y_train, batch_size, seed, augmentation, norm, dtype, world, parallel=None)``: the
    training images and labels on the model's device, cut into global batches of ``batch_size`` in an order
    drawn from ``seed``; this process (rank) takes its shard of each, augmented as ``augmentation`` says.

    ``parallel`` (the model's DataParallel: one shard per CPU thread) augments each batch in as many parts side
    by side on its threads, each part drawing its images' numbers from the whole batch's stream (RowsOf): the
    same images as one part would give, bit for bit. Mixup and cutmix pair images across the batch, so with
    them a batch is augmented whole."""

    def __init__(self, x_train, y_train, batch_size, seed, augmentation: Augmentation, norm, dtype, world,
                 parallel=None):
        self.x, self.y, self.batch_size, self.augmentation = x_train, y_train, batch_size, augmentation
        self.run_seed = seed                                     # the run's --seed: every stream derives from it
        self.norm, self.dtype, self.world = norm, dtype, world
        a = augmentation
        self.parallel = parallel if (a.trivial_augment or a.augment != "none") and not (a.mixup or a.cutmix) else None
        self.xp = get_array_module(x_train)
        self.size = len(y_train)
        self.steps = -(-self.size // self.batch_size)           # per epoch: the last batch may be short

    def seed(self, epoch, step, stream):
        """The seed of ``stream`` at (epoch, step): the same on one process as ever, per rank across several."""
        rank = (self.world.rank,) if self.world.size > 1 else ()
        return seed_for(self.run_seed, epoch, step, int(stream), *rank)

    def order(self, epoch):
        """The epoch's permutation of the training images, on the device (the same on every rank)."""
        return to_device(np.random.default_rng(seed_for(self.run_seed, epoch)).permutation(self.size), self.xp)

    def batch(self, order, epoch, i):
        """Step ``i`` of the epoch whose ``order`` is given: (x, targets, labels, global batch size), x and the
        targets augmented, this rank's rows of the global batch."""
        rows = order[i * self.batch_size:(i + 1) * self.batch_size]   # the global batch, the same on every rank
        idx = rows[shard(len(rows), self.world)]                        # this rank's rows of it
        labels = self.y[idx]
        seed = self.seed(epoch, i, Stream.AUGMENT)
        host_rng = np.random.default_rng(self.seed(epoch, i, Stream.MIX))
        if self.parallel is None or len(idx) < 2:
            rng = default_rng(self.xp, seed)
            x, target = augment_batch(self.augmentation, self.x[idx], labels, self.norm, self.dtype, rng, host_rng)
            return x, target, labels, len(rows)
        B = len(idx)
        bounds = np.linspace(0, B, self.parallel.threads + 1).astype(int)    # the parts, one per thread

        def part(s):                    # rows s of this batch, with the whole batch's draws cut to them
            rng = RowsOf(default_rng(self.xp, seed), s, B)
            return augment_batch(self.augmentation, self.x[idx[s]], labels[s], self.norm, self.dtype, rng, host_rng)[0]

        parts = self.parallel.run([lambda s=slice(a, b): part(s) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])
        return self.xp.concatenate(parts), labels, labels, len(rows)
