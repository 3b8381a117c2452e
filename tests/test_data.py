import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from npvit.data import (CIFAR10_CLASSES, DataError, download_cifar10, load_cifar10, load_image, load_image_folder)
from tests.cifar_fixtures import fake_batches, fake_cifar_archive, write_fake_cifar


def test_reads_the_standard_layout(tmp_path):
    write_fake_cifar(tmp_path, n_per_batch=20)
    d = load_cifar10(tmp_path)
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (20, 3, 32, 32) and d.y_train.dtype == np.int64
    assert d.classes == CIFAR10_CLASSES
    # rows are channel-major: the first 1024 bytes are the red plane
    import pickle
    raw = pickle.loads(fake_batches(20)["data_batch_1"])
    np.testing.assert_array_equal(d.x_train[0, 0].ravel(), raw["data"][0, :1024])
    np.testing.assert_array_equal(d.y_train[:20], raw["labels"])
    small = d.limit(train=7, test=3)
    assert len(small.x_train) == 7 and len(small.y_test) == 3


def test_missing_data_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 not found.*--data-dir"):
        load_cifar10(tmp_path, download=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "missing_one"])
def test_corrupt_data_is_a_clear_error(tmp_path, damage):
    write_fake_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage")
    elif damage == "wrong_shape":
        import pickle
        path.write_bytes(pickle.dumps({"data": np.zeros((5, 100), np.uint8), "labels": [0] * 5}))
    else:
        path.unlink()
    match = "not found" if damage == "missing_one" else "data_batch_3"
    with pytest.raises(DataError, match=match):
        load_cifar10(tmp_path, download=False)


class Server:
    """A static file server on 127.0.0.1 (a random free port) for the download tests."""

    def __init__(self, folder):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    s = Server(folder)
    s.folder = folder
    yield s
    s.close()


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_download_fallback_over_loopback(server, tmp_path):
    archive = fake_cifar_archive(server.folder / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    d = load_cifar10(root, download=True, url=f"{server.url}/cifar-10-python.tar.gz", md5=md5(archive))
    assert d.x_train.shape == (100, 3, 32, 32)
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"], "temporary files left behind"


def test_download_with_wrong_md5_leaves_nothing(server, tmp_path):
    fake_cifar_archive(server.folder / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DataError, match="MD5"):
        download_cifar10(root, url=f"{server.url}/cifar-10-python.tar.gz", md5="0" * 32)
    assert os.listdir(root) == []


def test_unsafe_archive_is_refused(server, tmp_path):
    archive = fake_cifar_archive(server.folder / "evil.tar.gz", extra_members=[("../escape.txt", b"x")])
    root = tmp_path / "data"
    with pytest.raises(DataError, match="unsafe archive member '../escape.txt'"):
        download_cifar10(root, url=f"{server.url}/evil.tar.gz", md5=md5(archive))
    assert os.listdir(root) == [] and not (tmp_path / "escape.txt").exists()


def test_unreachable_server_is_a_clear_error(server, tmp_path):
    with pytest.raises(DataError, match="could not download CIFAR-10"):
        download_cifar10(tmp_path / "d", url=f"{server.url}/missing.tar.gz", md5="0" * 32)
    assert os.listdir(tmp_path / "d") == []


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("zebra", "apple"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(a).save(tmp_path / split / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "train" / "apple" / "notes.txt").write_text("not an image")
    d = load_image_folder(tmp_path, image_size=16)
    assert d.classes == ("apple", "zebra")
    assert d.x_train.shape == (6, 3, 16, 16) and d.x_test.shape == (4, 3, 16, 16)
    assert list(d.y_train) == [0, 0, 0, 1, 1, 1]
    assert load_image(tmp_path / "test" / "apple" / "0.jpg", 16).shape == (1, 3, 16, 16)
    (tmp_path / "train" / "apple" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        load_image_folder(tmp_path, image_size=16)
    with pytest.raises(DataError, match="needs .*train/<class>"):
        load_image_folder(tmp_path / "nowhere", image_size=16)


def test_a_crafted_pickle_runs_no_code(tmp_path):
    """A data_batch whose pickle asks for os.system is refused before anything runs."""
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match=r"data_batch_1 is not a CIFAR-10 batch: it asks to build (posix|os)\.system"):
        load_cifar10(tmp_path)
    assert not marker.exists(), "the pickle's code ran"
    # the same for batches.meta
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="batches.meta"):
        load_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_the_restricted_unpickler_reads_every_protocol(tmp_path, protocol):
    import io
    import pickle

    from npvit.data import safe_unpickle

    d = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2], "batch_label": b"x",
         "filenames": [b"a.png"], "n": np.int64(3)}
    back = safe_unpickle(io.BytesIO(pickle.dumps(d, protocol=protocol)))
    np.testing.assert_array_equal(back["data"], d["data"])
    assert back["labels"] == [1, 2] and back["n"] == 3


def test_an_unreadable_batch_is_named_as_a_permission_problem(tmp_path, monkeypatch):
    import builtins

    write_fake_cifar(tmp_path)
    real_open = builtins.open
    locked = str(tmp_path / "cifar-10-batches-py" / "test_batch")

    def fake_open(path, *a, **k):        # root reads any file, so chmod cannot show this here
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(DataError, match="cannot read CIFAR-10 file .*test_batch: permission denied") as e:
        load_cifar10(tmp_path)
    assert "corrupt" not in str(e.value) and "delete" not in str(e.value)


def test_data_dir_may_be_the_batches_folder(tmp_path):
    write_fake_cifar(tmp_path)
    assert load_cifar10(tmp_path / "cifar-10-batches-py").x_train.shape == (100, 3, 32, 32)


def _folders(root, spec):
    from PIL import Image

    for split, classes in spec.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / cls / f"{i}.png")


def test_image_folders_with_an_empty_or_unknown_class_are_errors(tmp_path):
    _folders(tmp_path / "a", {"train": {"cat": 2, "dog": 0}, "test": {"cat": 1}})
    with pytest.raises(DataError, match=r"class folder .*train/dog holds no images"):
        load_image_folder(tmp_path / "a", image_size=8)
    _folders(tmp_path / "b", {"train": {"cat": 2}, "test": {"cat": 1, "cow": 1}})
    with pytest.raises(DataError, match=r"test has class folders that .*train lacks: \['cow'\]"):
        load_image_folder(tmp_path / "b", image_size=8)


# -- data you can trust -------------------------------------------------------------------------------------
def test_batches_npvit_extracted_are_checked_against_their_recorded_checksums(server, tmp_path):
    archive = fake_cifar_archive(server.folder / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    load_cifar10(root, download=True, url=f"{server.url}/cifar-10-python.tar.gz", md5=md5(archive))
    folder = root / "cifar-10-batches-py"
    assert (folder / "npvit-sha256.json").is_file()
    batch = folder / "data_batch_3"
    blob = bytearray(batch.read_bytes())
    blob[-2000:-1000] = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()  # pixels, not the pickle
    batch.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"data_batch_3 has changed since npvit extracted it"):
        load_cifar10(root)
    test_only = load_cifar10(root, splits=("test",))          # what evaluation reads is intact
    assert len(test_only.y_test) == 20 and len(test_only.y_train) == 0
    (folder / "npvit-sha256.json").write_text("{broken")
    with pytest.raises(DataError, match="npvit-sha256.json, the checksums recorded .* is damaged"):
        load_cifar10(root, splits=("test",))


def test_evaluate_reads_only_the_test_batch(tmp_path):
    """A damaged training batch does not stop evaluate.py, which never reads it."""
    import subprocess
    import sys

    from tests.cifar_fixtures import REPO
    data = write_fake_cifar(tmp_path / "data", n_per_batch=64)
    small = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48", "--num-hidden-layers",
             "2", "--no-progress", "--threads", "1", "--batch-size", "64", "--epochs", "1"]
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--data-dir", str(data), "--out-dir",
                    str(tmp_path / "run"), *small], check=True, capture_output=True)
    (data / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"garbage")
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), str(tmp_path / "run" / "best.npz"),
                        "--data-dir", str(data)], capture_output=True, text=True)
    assert p.returncode == 0 and "test accuracy" in p.stdout, p.stderr


# -- every image read as the picture it is ---------------------------------------------------------------------
@pytest.fixture
def grey(tmp_path):
    """An 8-bit grey picture saved as PNG, and its twins: 16-bit (I;16) PNG, float (F) TIFF in [0, 1], float in
    [0, 255]; all must read as the 8-bit one does."""
    from PIL import Image

    g8 = np.random.default_rng(0).integers(0, 256, (40, 40)).astype(np.uint8)
    paths = {"8-bit": tmp_path / "g8.png", "16-bit": tmp_path / "g16.png", "float": tmp_path / "gf.tif",
             "float255": tmp_path / "gf255.tif"}
    Image.fromarray(g8).save(paths["8-bit"])
    Image.fromarray(g8.astype(np.uint16) * 257).save(paths["16-bit"])
    Image.fromarray(g8.astype(np.float32) / 255).save(paths["float"])
    Image.fromarray(g8.astype(np.float32)).save(paths["float255"])
    assert Image.open(paths["16-bit"]).mode == "I;16" and Image.open(paths["float"]).mode == "F"
    return paths


@pytest.mark.parametrize("twin", ["16-bit", "float", "float255"])
@pytest.mark.parametrize("channels", [3, 1])
def test_16_bit_and_float_images_read_as_their_8_bit_twin(grey, twin, channels):
    from PIL import Image

    expected = load_image(grey["8-bit"], 32, channels)
    np.testing.assert_array_equal(load_image(grey[twin], 32, channels), expected)
    assert abs(float(expected.mean()) - 127) < 10                         # not almost white, as Pillow alone reads it
    assert np.asarray(Image.open(grey["16-bit"]).convert("L")).mean() > 250   # (what Pillow's own convert gives)


def test_palette_cmyk_and_transparent_images_read_as_rgb(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    p = Image.fromarray(rgb).quantize(64)
    p.save(tmp_path / "p.png")
    p.convert("RGB").save(tmp_path / "twin.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png", 32), load_image(tmp_path / "twin.png", 32))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert load_image(tmp_path / "c.jpg", 32).shape == (1, 3, 32, 32)
    t = Image.fromarray(rgb).quantize(64)
    t.info["transparency"] = 0
    t.save(tmp_path / "t.png", transparency=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                      # Pillow's remarks never surface
        assert load_image(tmp_path / "t.png", 32).shape == (1, 3, 32, 32)


def test_animated_huge_and_unplaceable_images_are_refused_in_one_line(tmp_path, monkeypatch):
    from PIL import Image

    frames = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"a.gif is animated \(3 frames\): npvit reads still images"):
        load_image(tmp_path / "a.gif", 32)
    frames[0].save(tmp_path / "still.gif")
    assert load_image(tmp_path / "still.gif", 32).shape == (1, 3, 32, 32)
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)                  # 3600 pixels: a "bomb" past the limit
    with pytest.raises(DataError, match="big.png is too large to read safely"):
        load_image(tmp_path / "big.png", 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)                  # and far past it (Pillow's error)
    with pytest.raises(DataError, match="big.png is too large to read safely"):
        load_image(tmp_path / "big.png", 32)
    monkeypatch.undo()
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(tmp_path / "f300.tif")
    assert load_image(tmp_path / "f.tif", 8).max() == 4                   # in [0, 255]: as it is (rounded)
    with pytest.raises(DataError, match=r"float image with values from 300 to 300"):
        load_image(tmp_path / "f300.tif", 8)


def test_an_image_folder_with_16_bit_images_trains_on_the_right_pixels(tmp_path, grey):
    import shutil
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / "ds" / split / cls
            d.mkdir(parents=True)
            shutil.copy(grey["16-bit"], d / "x.png")
    ds = load_image_folder(tmp_path / "ds", 32)
    np.testing.assert_array_equal(ds.x_train[0], load_image(grey["8-bit"], 32)[0])
    only_test = load_image_folder(tmp_path / "ds", 32, splits=("test",))
    assert len(only_test.x_train) == 0 and len(only_test.x_test) == 2
