"""TrivialAugment, batched (npvit/trivial_augment.py): every operation against PIL's (the definitions
torchvision follows) on 8-bit images, the batch against a per-image loop, and the draws."""
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from npvit import trivial_augment as ta
from npvit.backend import default_rng, to_device, to_numpy


def images(xp, b=6, size=12, seed=0):
    """uint8-valued float images in [0, 1], (b, 3, size, size), with some flat and some narrow channels."""
    rng = np.random.default_rng(seed)
    u8 = rng.integers(0, 256, (b, 3, size, size)).astype(np.float64)
    u8[1] = 77                                                   # a flat image
    u8[2] = 100 + (u8[2] % 40)                                   # a low-contrast one
    u8[3, 0] = (u8[3, 0] // 64) * 64                             # few distinct values in one channel
    return to_device(u8 / 255.0, xp)


def pil(img01):
    return Image.fromarray(np.round(img01.transpose(1, 2, 0) * 255).astype(np.uint8))


def unpil(im):
    return np.asarray(im, dtype=np.float64).transpose(2, 0, 1) / 255.0


PIL_OPS = {
    "Brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(1 + m),
    "Color": lambda im, m: ImageEnhance.Color(im).enhance(1 + m),
    "Contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(1 + m),
    "Sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + m),
    "Posterize": lambda im, m: ImageOps.posterize(im, int(m)),
    "Solarize": lambda im, m: ImageOps.solarize(im, m),
    "AutoContrast": lambda im, m: ImageOps.autocontrast(im),
    "Equalize": lambda im, m: ImageOps.equalize(im),
    "ShearX": lambda im, m: im.transform(im.size, Image.AFFINE, (1, m, 0, 0, 1, 0), Image.NEAREST),
    "ShearY": lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, 0, m, 1, 0), Image.NEAREST),
}
# PIL rounds its blends to 8 bits and takes grey as (299 R + 587 G + 114 B) / 1000 in integers, where
# torchvision (and npvit) keep floats: at most a level or two apart. The rest agree exactly.
TOLERANCE = {"Brightness": 1.01, "Color": 2.01, "Contrast": 2.01, "Sharpness": 1.51, "AutoContrast": 1.01}


@pytest.mark.parametrize("op", list(PIL_OPS))
def test_each_operation_matches_pil(op, xp):
    x = images(xp, size=12 if op != "Equalize" else 32)
    for strength in (0, 7, 19, 30):
        m = ta.magnitudes(op)[strength]
        for sign in ((1, -1) if op in ta.SIGNED else (1,)):
            ms = np.full(x.shape[0], sign * m)
            out = to_numpy(ta.apply(op, x, to_device(ms, xp)))
            assert out.dtype == x.dtype and out.shape == x.shape
            host = to_numpy(x)
            want = np.stack([unpil(PIL_OPS[op](pil(img), sign * m)) for img in host])
            worst = np.abs(out - want).max() * 255
            assert worst <= TOLERANCE.get(op, 1e-6), f"{op} m={sign * m}: {worst:.3f} levels from PIL"


def test_operations_change_what_they_should(xp):
    """Non-vacuous: at full strength every operation changes a low-contrast image (32x32: equalize needs more
    than 255 pixels to change anything)."""
    x = images(xp, size=32)
    for op in ta.OPS[1:]:
        m = to_device(np.full(x.shape[0], ta.magnitudes(op)[-1] if op != "Posterize" else 2.0), xp)
        out = to_numpy(ta.apply(op, x, m))
        assert not np.allclose(out[2], to_numpy(x)[2]), op        # the low-contrast image


@pytest.mark.parametrize("size", [8, 9])
def test_rotate_and_translate_are_exact(size, xp):
    x = images(xp, size=size)
    host = to_numpy(x)
    quarter = to_numpy(ta.apply("Rotate", x, to_device(np.full(6, 90.0), xp)))
    assert {np.array_equal(quarter, np.rot90(host, k, axes=(2, 3))) for k in (1, 3)} == {True, False}
    np.testing.assert_array_equal(to_numpy(ta.apply("Rotate", to_device(quarter, xp), to_device(np.full(6, -90.0),
                                                                                                 xp))), host)
    shifted = to_numpy(ta.apply("TranslateX", x, to_device(np.full(6, 3.7), xp)))    # int(3.7) = 3 pixels
    want = np.zeros_like(host)
    want[..., 3:] = host[..., :-3]
    np.testing.assert_array_equal(shifted, want)
    shifted = to_numpy(ta.apply("TranslateY", x, to_device(np.full(6, -2.2), xp)))
    want = np.zeros_like(host)
    want[:, :, :-2] = host[:, :, 2:]
    np.testing.assert_array_equal(shifted, want)


@pytest.mark.parametrize("select", ["gather", "mask"])
def test_the_batch_is_each_image_with_its_own_draw(select, xp):
    """trivial_augment(x) equals, image by image, apply(the op it drew, at its strength and sign),
    whether each operation runs on the images that drew it (gather) or on all, kept where drawn (mask)."""
    x = images(xp, b=64, size=8, seed=3)
    out = to_numpy(ta.trivial_augment(x, default_rng(xp, 11), select=select))
    rng = default_rng(xp, 11)                                    # the same draws, in the same order
    op_of, bin_of = to_numpy(rng.integers(0, len(ta.OPS), size=64)), to_numpy(rng.integers(0, ta.NUM_BINS, size=64))
    sign = np.where(to_numpy(rng.random(64)) < 0.5, -1.0, 1.0)
    assert len(set(op_of.tolist())) >= 10                        # most operations were drawn
    for i in range(64):
        op = ta.OPS[op_of[i]]
        m = ta.magnitudes(op)[bin_of[i]] * (sign[i] if op in ta.SIGNED else 1.0)
        want = to_numpy(x[i:i + 1]) if op == "Identity" else to_numpy(ta.apply(op, x[i:i + 1],
                                                                               to_device(np.array([m]), xp)))
        np.testing.assert_allclose(out[i:i + 1], want, rtol=0, atol=1e-6, err_msg=f"image {i}: {op} {m}")
    again = to_numpy(ta.trivial_augment(x, default_rng(xp, 11), select=select))
    np.testing.assert_array_equal(out, again)
    other = "mask" if select == "gather" else "gather"
    np.testing.assert_array_equal(out, to_numpy(ta.trivial_augment(x, default_rng(xp, 11), select=other)))
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("select", ["gather", "mask"])
def test_prob_leaves_the_undrawn_images_as_they_are(select, xp):
    """With prob p each image is augmented when its extra draw is under p (as with prob 1, whose draws
    come first and are the same), else left exactly as it was; prob 1 is the plain call."""
    x = images(xp, b=64, size=8, seed=5)
    full = to_numpy(ta.trivial_augment(x, default_rng(xp, 7), select=select))
    np.testing.assert_array_equal(to_numpy(ta.trivial_augment(x, default_rng(xp, 7), select=select, prob=1.0)), full)
    half = to_numpy(ta.trivial_augment(x, default_rng(xp, 7), select=select, prob=0.5))
    rng = default_rng(xp, 7)                                     # the draws: op, bin, sign, then touched
    rng.integers(0, len(ta.OPS), size=64), rng.integers(0, ta.NUM_BINS, size=64), rng.random(64)
    touched = to_numpy(rng.random(64)) < 0.5
    assert 20 < touched.sum() < 44
    np.testing.assert_array_equal(half[touched], full[touched])
    np.testing.assert_array_equal(half[~touched], to_numpy(x)[~touched])
    assert (full[~touched] != to_numpy(x)[~touched]).any()      # they would have changed at prob 1


@pytest.mark.parametrize("prob", [0.0, -0.5, 1.5])
def test_prob_outside_0_1_is_refused(prob):
    with pytest.raises(ValueError, match="prob must be in"):
        ta.trivial_augment(images(np), default_rng(np, 0), prob=prob)


def test_select_is_named():
    with pytest.raises(ValueError, match="select must be"):
        ta.trivial_augment(images(np), default_rng(np, 0), select="all")


def test_float32_stays_float32(xp):
    x = images(xp).astype(np.float32)
    out = ta.trivial_augment(x, default_rng(xp, 0))
    assert out.dtype == np.float32
    for op in ta.OPS[1:]:
        assert ta.apply(op, x, to_device(np.full(6, 5.0), xp)).dtype == np.float32, op


def test_magnitudes_are_torchvisions_ranges():
    assert ta.magnitudes("Posterize").tolist()[::5] == [8, 7, 6, 5, 4, 3, 2]
    assert ta.magnitudes("Rotate")[-1] == 135.0 and ta.magnitudes("TranslateX")[-1] == 32.0
    assert ta.magnitudes("Solarize")[0] == 255.0 and ta.magnitudes("Solarize")[-1] == 0.0
    assert len(ta.OPS) == 14 and all(len(ta.magnitudes(op)) == 31 for op in ta.OPS)
