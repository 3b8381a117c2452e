"""Datasets: CIFAR-10 in its standard python layout, and folders of images.

Images are held once as uint8 (N, C, H, W) on the host; the trainer moves them
to the model's device once and normalises batches on the fly there.

CIFAR-10 (Krizhevsky 2009) lives in ``<root>/cifar-10-batches-py/``:
``data_batch_1..5``, ``test_batch`` and ``batches.meta``, pickled dicts with
``data`` (N, 3072) uint8 (channel-major rows) and ``labels``. They are read
through a restricted unpickler that builds only what those files hold, so a
crafted file cannot run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass

import numpy as np

from .errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = "test_batch"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")



@dataclass
class Dataset:
    """uint8 images (N, C, H, W) and int64 labels (N,) for both splits, with class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple

    def limit(self, train=None, test=None) -> "Dataset":
        """The first ``train`` / ``test`` images of each split (for quick runs)."""
        for name, n in (("train", train), ("test", test)):
            if n is not None and n <= 0:
                raise ValueError(f"--{name}-limit must be positive, got {n}")
        return Dataset(self.x_train[:train], self.y_train[:train], self.x_test[:test], self.y_test[:test],
                       self.classes)

    def channel_stats(self):
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.x_train.astype(np.float64) / 255.0
        return x.mean(axis=(0, 2, 3)).tolist(), x.std(axis=(0, 2, 3)).tolist()


# -- CIFAR-10 -------------------------------------------------------------------
def _fix_hint(root):
    return (f"delete {os.path.join(root, CIFAR10_DIR)} and run again with downloading allowed, "
            f"or point --data-dir at a folder holding a good {CIFAR10_DIR}/")


class SafeUnpickler(pickle.Unpickler):
    """Builds only what the CIFAR-10 batches hold: dicts, lists, strings, bytes, numbers and NumPy arrays.

    A pickle names the callables that rebuild its objects; a crafted one can name ``os.system``.
    Here every name outside the few NumPy array constructors is refused before it is looked up.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),   # protocol 5
               ("_codecs", "encode")}     # how protocol-2 pickles spell bytes

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks to build {module}.{name}, which a CIFAR-10 batch never holds "
                                     f"(refused: unpickling it could run code)")


def safe_unpickle(f):
    return SafeUnpickler(f, encoding="latin1").load()


def _read_batch(path, root, recorded=None):
    try:
        with open(path, "rb") as f:
            if recorded:
                check_recorded(f, path, recorded, root)
            d = safe_unpickle(f)
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 file {path} is missing; {_fix_hint(root)}") from None
    except PermissionError:
        raise DataError(f"cannot read CIFAR-10 file {path}: permission denied (check the file's "
                        f"permissions; the data itself may be fine)") from None
    except IsADirectoryError:
        raise DataError(f"CIFAR-10 file {path} is a directory, not a batch file; {_fix_hint(root)}") from None
    except pickle.UnpicklingError as e:
        raise DataError(f"CIFAR-10 file {path} is not a CIFAR-10 batch: {e}; {_fix_hint(root)}") from None
    except Exception as e:
        raise DataError(f"CIFAR-10 file {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                        f"{_fix_hint(root)}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"CIFAR-10 file {path} has data {data.shape} and {len(labels)} labels, expected "
                        f"(N, 3072) and N labels; {_fix_hint(root)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 file {path} has labels outside 0..9; {_fix_hint(root)}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10_root(root):
    """The folder holding ``cifar-10-batches-py/``; ``root`` may also be that folder itself."""
    root = os.fspath(root)
    if os.path.basename(os.path.normpath(root)) == CIFAR10_DIR and cifar10_present(os.path.dirname(
            os.path.normpath(root))):
        return os.path.dirname(os.path.normpath(root))
    return root


def cifar10_present(root) -> bool:
    folder = os.path.join(root, CIFAR10_DIR)
    return all(os.path.isfile(os.path.join(folder, f)) for f in CIFAR10_TRAIN + [CIFAR10_TEST])


def load_cifar10(root, download=False, url=CIFAR10_URL, md5=CIFAR10_MD5, splits=("train", "test")) -> Dataset:
    """Read CIFAR-10 from ``root/cifar-10-batches-py`` (``root`` may be that folder itself); download it
    first if absent and ``download``. Only the batches of ``splits`` are read (a split not asked for is
    empty), each checked against the checksum recorded when npvit extracted it, where it did."""
    root = cifar10_root(root)
    if not cifar10_present(root):
        if not download:
            raise DataError(f"CIFAR-10 not found: {os.path.join(root, CIFAR10_DIR)} does not hold "
                            f"{', '.join(CIFAR10_TRAIN)}, {CIFAR10_TEST}; point --data-dir at the folder "
                            f"that contains {CIFAR10_DIR}/")
        download_cifar10(root, url=url, md5=md5)
    folder = os.path.join(root, CIFAR10_DIR)
    recorded = read_checksums(folder)
    empty = (np.zeros((0, 3, 32, 32), np.uint8), np.zeros(0, np.int64))
    train = [_read_batch(os.path.join(folder, f), root, recorded) for f in CIFAR10_TRAIN] if "train" in splits \
        else [empty]
    x_test, y_test = _read_batch(os.path.join(folder, CIFAR10_TEST), root, recorded) if "test" in splits else empty
    classes = CIFAR10_CLASSES
    meta = os.path.join(folder, "batches.meta")
    if os.path.isfile(meta):
        try:
            with open(meta, "rb") as f:
                if recorded:
                    check_recorded(f, meta, recorded, root)
                classes = tuple(safe_unpickle(f)["label_names"])
        except PermissionError:
            raise DataError(f"cannot read CIFAR-10 file {meta}: permission denied") from None
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"CIFAR-10 file {meta} is corrupt ({e}); {_fix_hint(root)}") from None
    return Dataset(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test,
                   classes)


def download_cifar10(root, url=CIFAR10_URL, md5=CIFAR10_MD5):
    """Fetch CIFAR-10 into ``root`` with the standard library: download ``url``, check ``md5``,
    extract safely. Nothing half-written is left in ``root`` if any step fails."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = os.path.join(tmp, "cifar-10-python.tar.gz")
        print(f"downloading CIFAR-10 from {url} ...", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
        except Exception as e:
            raise DataError(f"could not download CIFAR-10 from {url} ({e}); download cifar-10-python.tar.gz "
                            f"yourself and extract it into {root}, or point --data-dir at an existing copy") from None
        digest = _md5(archive)
        if digest != md5:
            raise DataError(f"downloaded archive from {url} has MD5 {digest}, expected {md5}: corrupt or not "
                            f"CIFAR-10; nothing was written to {root}")
        extracted = os.path.join(tmp, "x")
        safe_extract(archive, extracted)
        if not cifar10_present(extracted):
            raise DataError(f"the archive from {url} does not contain {CIFAR10_DIR}/ with the CIFAR-10 batches")
        record_checksums(os.path.join(extracted, CIFAR10_DIR))     # so that later damage is named
        target = os.path.join(root, CIFAR10_DIR)
        if os.path.exists(target):
            shutil.rmtree(target)       # an incomplete copy: replaced whole
        os.replace(os.path.join(extracted, CIFAR10_DIR), target)


CHECKSUMS = "npvit-sha256.json"     # beside the batches: their SHA-256, recorded when npvit extracted them


def record_checksums(folder):
    """Write the SHA-256 of every CIFAR-10 batch in ``folder`` into ``folder/npvit-sha256.json``."""
    from .runfiles import atomic_write_text

    sums = {}
    for name in CIFAR10_TRAIN + [CIFAR10_TEST, "batches.meta"]:
        with open(os.path.join(folder, name), "rb") as f:
            sums[name] = hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
                else hashlib.sha256(f.read()).hexdigest()
    atomic_write_text(os.path.join(folder, CHECKSUMS), json.dumps(sums, indent=1) + "\n")


def read_checksums(folder):
    """The recorded SHA-256 of each batch ({} where npvit did not extract them)."""
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            sums = json.load(f)
        if not isinstance(sums, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}, the checksums recorded when npvit extracted CIFAR-10, is damaged ({e}); "
                        f"delete it to read the batches unchecked, or {_fix_hint(os.path.dirname(folder))}") from None
    return sums


def check_recorded(f, path, recorded, root):
    """Refuse a batch file whose bytes are not those recorded at extraction, naming it."""
    name = os.path.basename(path)
    if name not in recorded:
        return
    digest = hashlib.sha256(f.read()).hexdigest()
    f.seek(0)
    if digest != recorded[name]:
        raise DataError(f"CIFAR-10 file {path} has changed since npvit extracted it (its SHA-256 is not the one "
                        f"recorded in {CHECKSUMS}): it is damaged; {_fix_hint(root)}")


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_extract(archive, dest):
    """Extract a tar archive, refusing links, devices, absolute paths and '..' (path traversal)."""
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            parts = m.name.replace("\\", "/").split("/")
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                raise DataError(f"refusing to extract unsafe archive member {m.name!r} from {archive}")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, **kwargs)


def load_dataset(kind, root, image_size=32, num_channels=3, download=False, splits=("train", "test")) -> Dataset:
    """``kind`` "cifar10" (``root/cifar-10-batches-py``) or "folder" (``root/train|test/<class>/``); only the
    ``splits`` asked for are read (evaluation reads the test images alone)."""
    if kind == "cifar10":
        return load_cifar10(root, download=download, splits=splits)
    if kind == "folder":
        return load_image_folder(root, image_size, num_channels, splits)
    raise ValueError(f"unknown dataset {kind!r}; choose 'cifar10' or 'folder'")


# -- image folders ----------------------------------------------------------------
def _pillow(what):
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(f"{what} needs Pillow: pip install pillow") from e
    return Image


def read_image(path, image_size, num_channels=3):
    """One image file as uint8 (C, S, S), S = ``image_size``, read as the picture it is: 8-bit images as
    they are; 16-bit (I;16) and 32-bit integer (I) ones scaled by 257 (0..65535 -> 0..255); float (F) ones
    in [0, 1] scaled by 255 (in [0, 255] as they are); palette, CMYK, YCbCr, ... converted by Pillow; then
    RGB (or L for 1 channel), resized bilinearly. Refused, each with one line: an animated image (which
    frame?), one over Pillow's decompression-bomb limit, and integer or float values it cannot place."""
    import warnings

    Image = _pillow("reading images")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # Pillow's other remarks never reach the console raw
            warnings.simplefilter("error", Image.DecompressionBombWarning)   # (checked first: added last)
            with Image.open(path) as im:
                if getattr(im, "n_frames", 1) > 1:
                    raise DataError(f"image {path} is animated ({im.n_frames} frames): npvit reads still images; "
                                    f"save the frame you want as a PNG")
                im = _eight_bit(im, path)
                im = im.convert("RGB" if num_channels == 3 else "L")
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(f"image {path} is too large to read safely ({e}); resize it first") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}") from None
    except Exception as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e})") from None
    return a.reshape(image_size, image_size, -1).transpose(2, 0, 1)


def _eight_bit(im, path):
    """``im`` with 8-bit channels: the modes Pillow's convert would clip (16-bit, 32-bit integer, float) are
    scaled here; every other mode is left to convert()."""
    from PIL import Image

    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        if not np.isfinite(a).all():
            raise DataError(f"image {path} holds NaN or infinite values")
        lo, hi = a.min(), a.max()
        if lo >= 0 and hi <= 1:
            a = a * 255.0
        elif not (lo >= 0 and hi <= 255):
            raise DataError(f"image {path} is a float image with values from {lo:g} to {hi:g}: npvit reads float "
                            f"images in [0, 1] (or [0, 255]); rescale it first")
    else:                                            # I;16, I;16B, I;16L, I;16N, I: 16-bit values
        lo, hi = a.min(), a.max()
        if lo < 0 or hi > 65535:
            raise DataError(f"image {path} is a {im.mode} integer image with values from {lo:g} to {hi:g}: npvit "
                            f"reads 16-bit images (0..65535); convert it to 8 or 16 bits first")
        a = a / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def load_image_folder(root, image_size, num_channels=3, splits=("train", "test")) -> Dataset:
    """``root/train/<class>/*.png|jpg`` and ``root/test/<class>/...``: classes are the sorted folder names of
    train/; every image is read as :func:`read_image` does. Only the ``splits`` asked for are read (the
    class names come from train/ always). Needs Pillow."""
    _pillow("reading image folders")
    root = os.fspath(root)
    folders = {s: os.path.join(root, s) for s in ("train", "test")}
    missing = [p for p in folders.values() if not os.path.isdir(p)]
    if missing:
        raise DataError(f"image folder dataset needs {root}/train/<class>/ and {root}/test/<class>/; "
                        f"missing {missing}")

    def class_dirs(folder):
        return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))

    classes = tuple(class_dirs(folders["train"]))
    if not classes:
        raise DataError(f"no class folders in {folders['train']}")
    unknown = sorted(set(class_dirs(folders["test"])) - set(classes))
    if unknown:
        raise DataError(f"{folders['test']} has class folders that {folders['train']} lacks: {unknown}; every "
                        f"test class must have training images")
    out = []
    for split, folder in folders.items():
        if split not in splits:
            out += [np.zeros((0, num_channels, image_size, image_size), np.uint8), np.zeros(0, np.int64)]
            continue
        xs, ys = [], []
        for label, name in enumerate(classes):
            cdir = os.path.join(folder, name)
            if not os.path.isdir(cdir):
                continue
            n_before = len(xs)
            for fname in sorted(os.listdir(cdir)):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    xs.append(read_image(os.path.join(cdir, fname), image_size, num_channels))
                    ys.append(label)
            if split == "train" and len(xs) == n_before:
                raise DataError(f"class folder {cdir} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                                f"add images or remove the folder")
        if not xs:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}/<class>/")
        out += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return Dataset(out[0], out[1], out[2], out[3], classes)


def load_image(path, image_size, num_channels=3):
    """One image file as uint8 (1, C, S, S), read as the folder dataset reads its images."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image at {path}")
    return read_image(path, image_size, num_channels)[None]


# -- torchvision dataset objects --------------------------------------------------------------------------
def _split_of(ds, what):
    """(images (N, C, H, W) uint8, labels (N,) int64) of one torchvision dataset object, read once."""
    data, targets = getattr(ds, "data", None), getattr(ds, "targets", None)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and targets is not None \
            and getattr(ds, "transform", None) is None:
        return np.ascontiguousarray(data.transpose(0, 3, 1, 2)), np.asarray(targets, dtype=np.int64)  # CIFAR's
    images, labels = [], []
    for i in range(len(ds)):
        item = ds[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"{what} item {i} is a {type(item).__name__}: npvit reads (image, label) pairs")
        image, label = item
        if hasattr(image, "getbands"):                              # a PIL image
            image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
        a = np.asarray(image)
        if a.dtype != np.uint8:
            raise DataError(f"{what} item {i} is a {a.dtype} image: npvit reads PIL images or uint8 arrays (a "
                            f"transform such as ToTensor turns them into floats: leave it out, npvit normalises)")
        a = a[:, :, None] if a.ndim == 2 else a
        if a.ndim != 3:
            raise DataError(f"{what} item {i} has shape {a.shape}: npvit reads (H, W, C) images")
        if images and a.shape != images[0].shape:
            raise DataError(f"{what} item {i} is {a.shape[:2]} pixels, item 0 {images[0].shape[:2]}: npvit trains "
                            f"on images of one size (a Resize transform makes them so)")
        images.append(a)
        labels.append(int(label))
    if not images:
        raise DataError(f"{what} holds no images")
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)), np.asarray(labels, dtype=np.int64)


def from_torchvision(train, test) -> Dataset:
    """A Dataset from two torchvision dataset objects (CIFAR10, CIFAR100, ImageFolder, or any whose items are
    (PIL image or uint8 array, class index) pairs), each read once into arrays: CIFAR-style objects (``data``
    (N, H, W, C) uint8 and ``targets``, no transform) whole, the others item by item. Class names: the training
    set's ``classes``, else numbers."""
    x_train, y_train = _split_of(train, "the training dataset")
    x_test, y_test = _split_of(test, "the test dataset")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"the training images are {x_train.shape[1:]} (C, H, W) and the test images "
                        f"{x_test.shape[1:]}: they must be alike")
    classes = tuple(getattr(train, "classes", None) or range(int(max(y_train.max(), y_test.max())) + 1))
    return Dataset(x_train, y_train, x_test, y_test, tuple(map(str, classes)))
