import numpy as np
import pytest

from npvit import augment as aug
from npvit.backend import default_rng, to_device, to_numpy


def images(xp, B=6, C=3, H=8, W=8):
    """Distinct, known pixel values: x[b, c, i, j] = 1000 b + 100 c + 10 i + j."""
    b, c, i, j = np.meshgrid(np.arange(B), np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    return to_device((1000 * b + 100 * c + 10 * i + j).astype(np.float32), xp)


def test_random_crop_takes_a_window_of_the_padded_image(xp):
    x = images(xp)
    out = to_numpy(aug.random_crop(x, 2, default_rng(xp, 0)))
    xpad = np.pad(to_numpy(x), ((0, 0), (0, 0), (2, 2), (2, 2)))
    assert out.shape == x.shape and out.dtype == np.float32
    for b in range(len(out)):
        hits = [(t, l) for t in range(5) for l in range(5) if np.array_equal(out[b], xpad[b, :, t:t + 8, l:l + 8])]
        assert hits, f"image {b} is not a window of its padded input"


def test_random_crop_takes_each_image_at_the_offsets_it_drew(xp):
    """Row offsets from the first draw, column offsets from the second, image by image (distinct per image, so a
    swapped or shared offset shows)."""
    x = images(xp, B=12)
    B, C, H, W = x.shape
    drawn = [np.arange(B) % 9, (5 * np.arange(B) + 2) % 9]       # top, then left, as random_crop draws them

    draws = iter(drawn)

    class Fixed:
        def integers(self, low, high, size):
            assert (low, high, size) == (0, 9, B)
            return to_device(next(draws), xp)

    out = to_numpy(aug.random_crop(x, 4, Fixed()))
    xpad = np.pad(to_numpy(x), ((0, 0), (0, 0), (4, 4), (4, 4)))
    top, left = drawn
    for b in range(B):
        np.testing.assert_array_equal(out[b], xpad[b, :, top[b]:top[b] + H, left[b]:left[b] + W])


def test_flip_mirrors_exactly_the_chosen_images(xp):
    x = images(xp, B=64)
    out, ref = to_numpy(aug.random_flip(x, default_rng(xp, 1))), to_numpy(x)
    flipped = [np.array_equal(o, r[..., ::-1]) for o, r in zip(out, ref)]
    kept = [np.array_equal(o, r) for o, r in zip(out, ref)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_random_resized_crop(xp):
    x = images(xp)
    np.testing.assert_allclose(to_numpy(aug.random_resized_crop(x, default_rng(xp, 0), (1, 1), (1, 1))),
                               to_numpy(x), atol=1e-3)
    out = to_numpy(aug.random_resized_crop(x, default_rng(xp, 0), (0.5, 1.0)))
    ref = to_numpy(x)
    assert out.shape == x.shape and out.dtype == np.float32
    # bilinear samples are convex combinations of each image's own pixels
    assert (out.min(axis=(1, 2, 3)) >= ref.min(axis=(1, 2, 3)) - 1e-3).all()
    assert (out.max(axis=(1, 2, 3)) <= ref.max(axis=(1, 2, 3)) + 1e-3).all()
    assert not np.allclose(out, ref)


def test_same_seed_same_augmentation(xp):
    x = images(xp, B=32)   # 32 images: two seeds drawing the same 32 flips happens once in 4e9
    for fn in (lambda r: aug.random_crop(x, 4, r), lambda r: aug.random_flip(x, r),
               lambda r: aug.random_resized_crop(x, r, (0.3, 1.0))):
        np.testing.assert_array_equal(to_numpy(fn(default_rng(xp, 5))), to_numpy(fn(default_rng(xp, 5))))
        assert not np.array_equal(to_numpy(fn(default_rng(xp, 5))), to_numpy(fn(default_rng(xp, 6))))


def test_normalize(xp):
    u8 = to_device(np.array([0, 128, 255], np.uint8).reshape(1, 3, 1, 1).repeat(2, 2).repeat(2, 3), xp)
    out = to_numpy(aug.normalize(u8, [0.5, 0.4, 0.3], [0.5, 0.2, 0.1], np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0, 0], [(0 - 0.5) / 0.5, (128 / 255 - 0.4) / 0.2, (1 - 0.3) / 0.1],
                               rtol=1e-6)


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_cutmix_targets(mixup, cutmix, xp):
    x = images(xp)
    y = to_device(np.array([0, 1, 2, 3, 4, 5]), xp)
    out, t = aug.mixup_cutmix(x, y, 10, default_rng(xp, 0), np.random.default_rng(0), mixup, cutmix)
    t = to_numpy(t)
    assert out.shape == x.shape and t.shape == (6, 10)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    assert (t[np.arange(6), np.arange(6)] > 0).all()


def test_normalizer_pair_matches_per_call_constants(xp):
    u8 = to_device(np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8), xp)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    pair = aug.normalizer(xp, mean, std, np.float32)
    np.testing.assert_array_equal(to_numpy(aug.normalize(u8, *pair, np.float32)),
                                  to_numpy(aug.normalize(u8, mean, std, np.float32)))
