"""The batch stream of a training run: which images, in which order, augmented how, with which randomness.

Everything random in a step comes from a named stream whose seed is derived from (seed, epoch,
step, stream), and on MPI runs the rank: the same step draws the same numbers however often a
run stopped and resumed, so a resumed run continues bit for bit.

    order(epoch)      a permutation of the training images from (seed, epoch)
    batch(epoch, i)   this process's rows of global batch i, augmented on the model's device
"""
from __future__ import annotations

import enum

import numpy as np

from .. import augment as aug
from ..backend import default_rng, get_array_module, seed_for, to_device
from ..data import Dataset, load_dataset
from ..distributed import shard
from ..errors import ConfigError, DataError
from ..trivial_augment import trivial_augment


class Stream(enum.IntEnum):
    """The random streams of one step (their numbers are part of every checkpoint's future: never renumber)."""
    AUGMENT = 1       # crops, flips, TrivialAugment, mixup/cutmix masks: on the model's device
    DROPOUT = 2       # dropout and stochastic-depth masks (the model's own generators, reseeded per step)
    MIX = 3           # mixup/cutmix mixing weights: on the host


# -- the data a run trains and evaluates on ----------------------------------------------------------
def training_data(cfg) -> Dataset:
    """The dataset ``cfg`` names, checked against the model, limited, and split: with ``val_split`` N the
    last N training images become the evaluation set (the test set goes unused)."""
    try:
        data = load_dataset(cfg["dataset"], cfg["data_dir"], cfg["image_size"], cfg["num_channels"],
                            cfg["download"])
    except DataError as e:
        if cfg["dataset"] == "cifar10" and not cfg["download"] and "not found" in str(e):
            raise DataError(f"{e} (or drop --no-download to download it there)") from None
        raise
    if data.x_train.shape[1:] != (cfg["num_channels"], cfg["image_size"], cfg["image_size"]):
        raise ConfigError(f"the data's images are {data.x_train.shape[1:]} (C, H, W) but the model expects "
                          f"num_channels={cfg['num_channels']}, image_size={cfg['image_size']}")
    if len(data.classes) != cfg["num_classes"]:
        raise ConfigError(f"the data has {len(data.classes)} classes but num_classes={cfg['num_classes']}")
    data = data.limit(cfg["train_limit"], cfg["test_limit"])
    n = cfg["val_split"]
    if n:
        if n >= len(data.y_train):
            raise ConfigError(f"val_split {n} leaves no training images (there are {len(data.y_train)})")
        data = Dataset(data.x_train[:-n], data.y_train[:-n], data.x_train[-n:], data.y_train[-n:], data.classes)
    return data


def norm_stats(cfg, data):
    """The (mean, std) per channel the images are normalised with: the article's 0.5, or the data's own."""
    if cfg["normalize"] == "half":
        return [0.5] * cfg["num_channels"], [0.5] * cfg["num_channels"]
    return data.channel_stats()


# -- augmentation ------------------------------------------------------------------------------------------
def augment_batch(cfg, images_u8, y, norm, dtype, rng, host_rng):
    """uint8 images (B, C, H, W) and labels y (B,) -> normalised augmented x and targets (labels, or soft
    targets with mixup/cutmix). ``norm``: the (shift, scale) pair of aug.normalizer."""
    if cfg["trivial_augment"]:          # on the pixels, in [0, 1]; then the rest on the normalised images
        pixels = trivial_augment(images_u8.astype(dtype) * dtype.type(1 / 255), rng, prob=cfg["trivial_augment_prob"])
        pixels *= dtype.type(255)
        x = aug.normalize(pixels, *norm, dtype)
    else:
        x = aug.normalize(images_u8, *norm, dtype)
    if cfg["augment"] == "crop_flip":
        x = aug.random_crop(x, cfg["crop_padding"], rng)
    if cfg["augment"] == "article":
        x = aug.random_resized_crop(x, rng, scale=tuple(cfg["rrc_scale"]))
    if cfg["augment"] != "none":
        x = aug.random_flip(x, rng)
    if cfg["mixup"] or cfg["cutmix"]:
        return aug.mixup_cutmix(x, y, cfg["num_classes"], rng, host_rng, cfg["mixup"], cfg["cutmix"])
    return x, y


# -- the stream ------------------------------------------------------------------------------------------
class Batches:
    """``Batches(cfg, x_train, y_train, norm, dtype, world)``: the training images and labels on the model's
    device, cut into global batches of ``batch_size``; this process (rank) takes its shard of each."""

    def __init__(self, cfg, x_train, y_train, norm, dtype, world):
        self.cfg, self.x, self.y, self.norm, self.dtype, self.world = cfg, x_train, y_train, norm, dtype, world
        self.xp = get_array_module(x_train)
        self.size, self.batch_size = len(y_train), cfg["batch_size"]
        self.steps = -(-self.size // self.batch_size)           # per epoch: the last batch may be short

    def seed(self, epoch, step, stream):
        """The seed of ``stream`` at (epoch, step): the same on one process as ever, per rank across several."""
        rank = (self.world.rank,) if self.world.size > 1 else ()
        return seed_for(self.cfg["seed"], epoch, step, int(stream), *rank)

    def order(self, epoch):
        """The epoch's permutation of the training images, on the device (the same on every rank)."""
        return to_device(np.random.default_rng(seed_for(self.cfg["seed"], epoch)).permutation(self.size), self.xp)

    def batch(self, order, epoch, i):
        """Step ``i`` of the epoch whose ``order`` is given: (x, targets, labels, global batch size), x and the
        targets augmented, this rank's rows of the global batch."""
        rows = order[i * self.batch_size:(i + 1) * self.batch_size]   # the global batch, the same on every rank
        idx = rows[shard(len(rows), self.world)]                        # this rank's rows of it
        labels = self.y[idx]
        rng = default_rng(self.xp, self.seed(epoch, i, Stream.AUGMENT))
        host_rng = np.random.default_rng(self.seed(epoch, i, Stream.MIX))
        x, target = augment_batch(self.cfg, self.x[idx], labels, self.norm, self.dtype, rng, host_rng)
        return x, target, labels, len(rows)
