"""Datasets: the CIFAR download path against a local archive, local roots, ImageFolder ImageNet,
and the tensor-side augmentation."""
import hashlib
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper import data
from sweeper.data import cifar, imagenet
from sweeper.errors import SweeperError


def fake_cifar_archive(tmp_path, n=20):
    folder = tmp_path / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in (*data.CIFAR10.train_files, data.CIFAR10.test_file):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.fixture
def serve(tmp_path):
    """A loopback HTTP server over tmp_path, standing in for the dataset's host."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_path_fetches_checks_and_unpacks(tmp_path, serve):
    archive, md5 = fake_cifar_archive(tmp_path)
    root = tmp_path / "root"
    url = f"{serve}/{archive.name}"
    data.download_cifar(root, data.CIFAR10, url=url, md5=md5)
    assert data.find_cifar(root, data.CIFAR10) == root / "cifar-10-batches-py"
    x_tr, y_tr, x_te, y_te = cifar._cifar_loader(data.CIFAR10)(root, False)
    assert x_tr.shape == (100, 3, 32, 32) and x_te.shape == (20, 3, 32, 32) and x_tr.dtype == torch.uint8
    with pytest.raises(Exception):  # a wrong checksum is refused
        data.download_cifar(tmp_path / "other", data.CIFAR10, url=url, md5="0" * 32)


def test_missing_root_without_network_is_one_clear_error(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar, "download_cifar", no_network)
    with pytest.raises(SweeperError, match="no cifar-10-batches-py under .* download failed") as e:
        cifar._cifar_loader(data.CIFAR10)(tmp_path, True)
    assert e.value.where == "data_root"


def test_real_cifar10_root(cifar_root):
    x_tr, y_tr, x_te, y_te = data.load_arrays("cifar10", cifar_root)
    assert x_tr.shape == (50_000, 3, 32, 32) and x_te.shape == (10_000, 3, 32, 32)
    assert torch.bincount(y_tr).tolist() == [5000] * 10


def image_folder(root, per_split=(("train", 4), ("val", 2)), sizes=(70, 120)):
    """A tiny ImageNet-layout root: 3 classes of random JPEGs of random sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in per_split:
        for c in ("n01", "n02", "n03"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = rng.integers(*sizes, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.JPEG")
    return root


def test_imagenet_from_an_image_folder(tmp_path):
    image_folder(tmp_path)
    x_tr, y_tr, x_te, y_te = imagenet._load_imagenet(tmp_path, False)
    assert x_tr.shape == (12, 3, 64, 64) and x_te.shape == (6, 3, 64, 64)
    assert y_tr.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(SweeperError, match="no ImageNet under"):
        imagenet._load_imagenet(tmp_path / "train", False)
    # and a BN-only torchvision ResNet-18 trains on it
    from sweeper.experiments.train.loop import run_trial
    from sweeper.experiments.train.spec import TrainSpec

    spec = TrainSpec.from_values({"dataset": "imagenet", "model": "imagenet-resnet-18", "trainable": "bn",
                                  "epochs": 1, "batch_size": 6, "measure": []})
    result = run_trial(spec, str(tmp_path))
    assert 0 <= result.row["test_acc"] <= 1 and result.row["trainable_params"] == 9_600


def test_full_resolution_imagenet_streams_and_trains(tmp_path):
    from sweeper.data.imagenet_stream import stream_imagenet
    from sweeper.experiments.train.loop import run_trial
    from sweeper.experiments.train.spec import TrainSpec

    image_folder(tmp_path, sizes=(230, 300))
    spec = TrainSpec.from_values({"dataset": "imagenet-full", "model": "imagenet-resnet-18", "trainable": "bn",
                                  "epochs": 1, "batch_size": 5, "train_size": 10, "measure": ["bn"]})
    assert spec.dataset == "imagenet224"
    batches = {}
    for workers in (0, 1):  # augmentation is a function of (seed, epoch, image), not of the workers
        train, test = stream_imagenet(spec, tmp_path, "cpu", False, workers)
        batches[workers] = list(train.epoch(torch.Generator().manual_seed(3)))
        assert len(train) == 10 and train.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 3  # class-balanced 10
        assert [tuple(x.shape) for x, _ in batches[workers]] == [(5, 3, 224, 224)] * 2
        assert [tuple(x.shape) for x, _ in test.ordered()] == [(6, 3, 224, 224)]
    for (a, ya), (b, yb) in zip(batches[0], batches[1]):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    a, b = next(iter(train.ordered())), next(iter(train.ordered()))
    assert torch.equal(a[0], b[0])  # the training set in order (norm calibration) is the same every pass
    other = list(train.epoch(torch.Generator().manual_seed(4)))
    assert not torch.equal(other[0][0], batches[1][0][0])  # another epoch, other crops and order
    result = run_trial(spec, str(tmp_path))
    assert 0 <= result.row["test_acc"] <= 1 and result.row["trainable_params"] == 9_600
    assert len(result.tables["bn"]) == 4_800


def test_streamed_imagenet_has_no_arrays_and_needs_a_root(tmp_path):
    from sweeper.experiments.train.loop import run_trial
    from sweeper.experiments.train.spec import TrainSpec

    with pytest.raises(SweeperError, match="streamed from disk"):
        data.load_arrays("imagenet224", tmp_path)
    spec = TrainSpec.from_values({"dataset": "imagenet224", "model": "imagenet-resnet-18", "epochs": 1})
    with pytest.raises(SweeperError, match="needs a data root"):
        run_trial(spec, None)
    with pytest.raises(SweeperError, match="no ImageNet under"):
        run_trial(spec, str(tmp_path))
    # and `sweeper run` refuses before any trial, naming the root
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", "studies/imagenet.py", "--quick", "--store",
                        str(tmp_path / "store"), "--data-root", str(tmp_path)], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"sweeper: error: data_root: no ImageNet under {tmp_path}: expected train/<class>/ and val/<class>/ "
        "image folders (ImageNet cannot be downloaded automatically)"]
    assert not (tmp_path / "store" / "imagenet-quick").exists()


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = data.random_crop(x, 4, torch.Generator().manual_seed(1))
    b = data.random_crop(x, 4, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    # a crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    windows = {(dy, dx) for dy in range(9) for dx in range(9) if torch.equal(padded[0, :, dy:dy + 8, dx:dx + 8], a[0])}
    assert windows
    flipped = data.random_flip(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flipped, x))


def test_balanced_subset():
    y = torch.tensor([0, 1, 2] * 10)
    idx = data.balanced_subset(y, 9)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3]


def test_crop_pads_in_pixel_space_so_the_border_is_black():
    # The paper's pipeline pads the image with black (pixel 0) before normalising; padding the
    # normalised batch with 0 would fill the border with the mean colour instead.
    x = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    y = torch.zeros(64, dtype=torch.long)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    batches = data.Batches(x, y, 64, mean, std, "cpu", augment="crop")
    (xb, _), = list(batches.epoch(torch.Generator().manual_seed(0)))
    black = (0 - mean * 255) / (std * 255)
    image = (200 - mean * 255) / (std * 255)
    for c in range(3):
        values = set(torch.unique(xb[:, c]).tolist())
        assert values <= {black[c].item(), image[c].item()}
        assert black[c].item() in values  # some crop shows the border, and it is black
    assert 0.0 not in set(torch.unique(xb).tolist())  # never the mean colour
    # the image pixels are the un-augmented normalised ones, shifted
    (plain, _), = list(data.Batches(x, y, 64, mean, std, "cpu").epoch(torch.Generator().manual_seed(0)))
    assert torch.allclose(plain, image.view(1, 3, 1, 1).expand_as(plain))


def test_digits_are_scikit_learns_read_without_importing_it(monkeypatch):
    """The digits come from the CSV scikit-learn ships, read directly (importing scikit-learn
    costs every trial process about 1.5 s); they equal `load_digits()` exactly, and a scikit-learn
    that keeps its data elsewhere is asked instead."""
    from sklearn.datasets import load_digits

    from sweeper.data import digits

    theirs = load_digits()
    images, labels = digits.read_digits()
    assert np.array_equal(images, theirs.images) and np.array_equal(labels, theirs.target)
    monkeypatch.setattr(digits, "digits_file", lambda: None)
    images, labels = digits.read_digits()
    assert np.array_equal(images, theirs.images) and np.array_equal(labels, theirs.target)
    code = ("import sys; from sweeper.data.digits import read_digits; read_digits(); "
            "print('sklearn' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
