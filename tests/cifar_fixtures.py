"""Small CIFAR-10-format datasets written by the tests, and the real copy from ../shared when present."""
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np

from npvit.data import CIFAR10_CLASSES, CIFAR10_TEST, CIFAR10_TRAIN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
SHARED_ARCHIVE = os.path.join(SHARED, "data", "cifar10-jpeg.tar.gz")
SHARED_TOOL = os.path.join(SHARED, "tools", "cifar10_from_jpeg.py")


def fake_batches(n_per_batch=20, seed=0):
    """{filename: pickled bytes} in the real format: dict with 'data' (N, 3072) uint8 and 'labels'.
    Each class gets its own mean colour so a model can learn it."""
    rng = np.random.default_rng(seed)
    files = {}
    for name in CIFAR10_TRAIN + [CIFAR10_TEST]:
        labels = rng.integers(0, 10, n_per_batch)
        base = (labels[:, None] * 25).astype(np.int64)
        data = np.clip(base + rng.integers(-20, 20, (n_per_batch, 3072)), 0, 255).astype(np.uint8)
        files[name] = pickle.dumps({"data": data, "labels": labels.tolist(), "batch_label": name})
    files["batches.meta"] = pickle.dumps({"label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    return files


def write_fake_cifar(root, n_per_batch=20, seed=0):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name, blob in fake_batches(n_per_batch, seed).items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(blob)
    return root


def fake_cifar_archive(path, n_per_batch=20, extra_members=()):
    """A cifar-10-python.tar.gz lookalike; extra_members: (name, bytes) to add (e.g. unsafe paths)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in list(fake_batches(n_per_batch).items()):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for name, blob in extra_members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


REAL_CIFAR_HOWTO = ("no real CIFAR-10 here: set NPVIT_CIFAR10_DIR to a folder holding cifar-10-batches-py/ "
                    "(the python version of CIFAR-10), or keep this project's ../shared/data/cifar10-jpeg.tar.gz "
                    "beside the repository")


def real_cifar(root):
    """A folder holding the real cifar-10-batches-py/: $NPVIT_CIFAR10_DIR if set, else the copy from ../shared
    rebuilt into root (about 15 s); None if neither is there (skip with REAL_CIFAR_HOWTO)."""
    from npvit.data import cifar10_present, cifar10_root

    env = os.environ.get("NPVIT_CIFAR10_DIR")
    if env:
        found = cifar10_root(env)
        if not cifar10_present(found):
            raise RuntimeError(f"NPVIT_CIFAR10_DIR={env} does not hold cifar-10-batches-py/ with the six batches")
        return found
    if not (os.path.isfile(SHARED_ARCHIVE) and os.path.isfile(SHARED_TOOL)):
        return None
    if not os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        subprocess.run([sys.executable, SHARED_TOOL, str(root)], check=True, capture_output=True)
    return root
