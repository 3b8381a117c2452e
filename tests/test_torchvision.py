"""npvit's augmentations against torchvision's own transforms (the reference the article's script and most users
run), one operation at a time at fixed parameters, on real CIFAR-10 test images; and torchvision itself working
beside the pinned torch (one of its compiled operators runs).

Tolerances are in 8-bit levels (of 255) or, for the float transforms, relative to float64 round-off:
    exact (0 levels)   the flips, the padded crop, Normalize (1e-12), the shears, translations, rotations,
                       Posterize, Solarize and Equalize
    1 level            Brightness and AutoContrast: torchvision blends on uint8 tensors and rounds, npvit keeps
                       floats in [0, 1]
    2 levels           Color, Contrast and Sharpness: the same rounding, plus torchvision's grey image
                       (0.2989 R + 0.587 G + 0.114 B, rounded to uint8 before the blend)
    1e-12              RandomResizedCrop's bilinear resampling of a fixed box (float64), inside the box
Two differences are kept on purpose, so that every earlier run resumes bit for bit. At the edges of a crop box
smaller than the image, the output pixels whose source lies within half a pixel outside the box (one or two
rows and columns) blend in the image's pixels just outside it, where torchvision repeats the box's border:
npvit clamps to the image, torchvision to the box. And npvit's Rotate(m) is torchvision's Rotate(-m): TrivialAugmentWide draws the sign at random with
even odds, so the two draw the same distribution of images, and npvit keeps its convention so that every
earlier run resumes bit for bit.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402
from torchvision.transforms.autoaugment import _apply_op  # noqa: E402

from npvit import augment as aug  # noqa: E402
from npvit import trivial_augment as ta  # noqa: E402
from npvit.data import load_dataset  # noqa: E402

LEVELS = {"Brightness": 1.001, "AutoContrast": 1.001, "Color": 2.0, "Contrast": 2.0, "Sharpness": 2.0}


@pytest.fixture(scope="module")
def test_images(real_data):
    return load_dataset("cifar10", real_data, splits=("test",)).x_test[:64]       # (64, 3, 32, 32) uint8


def test_torchvision_imports_beside_torch_and_runs_an_operator():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert kept.tolist() == [0, 2]


@pytest.mark.parametrize("op", ta.OPS)
def test_each_trivial_augment_operation_matches_torchvision(op, test_images):
    x = test_images.astype(np.float64) / 255
    images = torch.from_numpy(test_images)
    for b in (0, 7, 19, 30):
        for sign in ((1, -1) if op in ta.SIGNED else (1,)):
            m = sign * float(ta.magnitudes(op)[b])
            ours = 255 * (ta.apply(op, x, np.full(len(x), m)) if op != "Identity" else x)
            theirs_m = -m if op == "Rotate" else (int(m) if op == "Posterize" else m)      # Rotate: see above
            theirs = _apply_op(images, op, theirs_m, interpolation=InterpolationMode.NEAREST, fill=None)
            worst = float(np.abs(ours - theirs.numpy()).max())
            assert worst <= LEVELS.get(op, 1e-9), f"{op} at {m}: {worst:.3f} levels from torchvision"


def test_flip_crop_and_normalize_match_torchvision(test_images):
    x = test_images.astype(np.float64) / 255
    images = torch.from_numpy(x)
    np.testing.assert_array_equal(x[..., ::-1], TF.hflip(images).numpy())
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    ours = aug.normalize(test_images, mean, std, np.float64)
    np.testing.assert_allclose(ours, TF.normalize(images, mean, std).numpy(), rtol=0, atol=1e-12)

    class Fixed:                                                # the draws random_crop makes, fixed
        def integers(self, low, high, size):
            return np.full(size, 3)
    ours = aug.random_crop(x, 4, Fixed())                       # pad 4, the window at (3, 3)
    theirs = TF.crop(TF.pad(images, 4), 3, 3, 32, 32)
    np.testing.assert_array_equal(ours, theirs.numpy())


@pytest.mark.parametrize("top, left, h, w", [(0, 0, 32, 32), (3, 5, 24, 20), (10, 0, 17, 29), (0, 7, 9, 9)])
def test_random_resized_crop_of_a_fixed_box_matches_torchvision(top, left, h, w, test_images):
    x = test_images.astype(np.float64) / 255

    class Fixed:                                                # draws that make random_resized_crop take this box
        def uniform(self, low, high, size):
            fits = np.log(w / h) if low < 0 else h * w / (32 * 32)   # the log aspect, else the area fraction
            return np.full(size, fits)

        def random(self, size):
            draws = getattr(self, "draws", 0)
            self.draws = draws + 1
            offset, room = (top, 32 - h + 1) if draws == 0 else (left, 32 - w + 1)
            return np.full(size, (offset + 0.5) / room)
    ours = aug.random_resized_crop(x, Fixed(), scale=(0.05, 1.0))
    theirs = TF.resized_crop(torch.from_numpy(x), top, left, h, w, [32, 32], InterpolationMode.BILINEAR,
                             antialias=False)
    inside_rows = ((np.arange(32) + 0.5) * h / 32 - 0.5 >= 0) & ((np.arange(32) + 0.5) * h / 32 - 0.5 <= h - 1)
    inside_cols = ((np.arange(32) + 0.5) * w / 32 - 0.5 >= 0) & ((np.arange(32) + 0.5) * w / 32 - 0.5 <= w - 1)
    inside = np.ix_(inside_rows, inside_cols)
    assert inside_rows.sum() >= 28 and inside_cols.sum() >= 28          # all but one or two at each edge
    np.testing.assert_allclose(ours[:, :, inside[0], inside[1]], theirs.numpy()[:, :, inside[0], inside[1]],
                               rtol=0, atol=1e-12)
    edge = np.abs(ours - theirs.numpy()).max()
    assert edge < 0.5 if (h, w) != (32, 32) else edge < 1e-12          # the edges: within the pixel steps


def test_npvit_trains_on_torchvision_dataset_objects(real_data, tmp_path, monkeypatch):
    """CIFAR10 objects (read whole through their arrays), FakeData and an ImageFolder (read item by item)."""
    from PIL import Image

    from npvit.data import from_torchvision
    from npvit.errors import DataError
    from npvit.training import build_config, train
    from npvit.training.console import Console
    datasets = torchvision.datasets
    # this project's CIFAR-10 is rebuilt from JPEGs, so its files' MD5s are not the originals torchvision checks
    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    cifar = datasets.CIFAR10(real_data, train=True), datasets.CIFAR10(real_data, train=False)
    data = from_torchvision(*cifar)
    ours = load_dataset("cifar10", real_data)
    np.testing.assert_array_equal(data.x_test, ours.x_test)
    np.testing.assert_array_equal(data.y_train, ours.y_train)
    assert data.classes == ours.classes

    settings = build_config(overrides=dict(epochs=1, train_limit=256, test_limit=128, hidden_size=24,
                                           num_attention_heads=3, intermediate_size=48, num_hidden_layers=1,
                                           progress=False, threads=1, out_dir=str(tmp_path / "run")))
    history = train(settings, console=Console(log=lambda *a: None), data=cifar)
    assert len(history) == 1 and 0 <= history[0]["test_acc"] <= 1

    fake = datasets.FakeData(size=40, image_size=(3, 32, 32), num_classes=10, random_offset=0)
    held = datasets.FakeData(size=10, image_size=(3, 32, 32), num_classes=10, random_offset=40)
    data = from_torchvision(fake, held)
    assert data.x_train.shape == (40, 3, 32, 32) and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_train[3], np.asarray(fake[3][0]).transpose(2, 0, 1))
    for split in ("train", "test"):
        for k in range(3):
            os.makedirs(tmp_path / "folder" / split / f"c{k}")
            for i in range(4):
                Image.fromarray(np.full((32, 32, 3), 40 * k + i, np.uint8)).save(
                    tmp_path / "folder" / split / f"c{k}" / f"{i}.png")
    folder = [datasets.ImageFolder(str(tmp_path / "folder" / s)) for s in ("train", "test")]
    data = from_torchvision(*folder)
    assert data.classes == ("c0", "c1", "c2") and data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.x_test[5, 0, 0, 0] == 41
    tensors = datasets.FakeData(size=4, image_size=(3, 32, 32), transform=torchvision.transforms.ToTensor())
    with pytest.raises(DataError, match="is a float32 image: .* ToTensor"):
        from_torchvision(tensors, tensors)
