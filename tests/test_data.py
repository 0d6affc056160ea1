"""tfkd.core.data: on-disk formats, splits, errors, augmentation, loaders (CPU, offline)."""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pytest
import torch

import tfkd.core.data as D
from tfkd.core.data.augment import AugmentParams

from fixtures_data import (
    class_colour,
    sample_ids,
    tiny_wnids,
    write_cifar10,
    write_cifar100,
    write_tiny_imagenet,
)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, n_train_per_class=20, n_test_per_class=4)
    write_cifar100(root, n_train_per_class=2, n_test_per_class=1)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_imagenet(root, n_classes=4, n_train_per_class=10, n_val_per_class=3)
    return root


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ------------------------------------------------------------------------------- registry, load


def test_registry_names():
    assert {"cifar10", "cifar100", "tiny_imagenet", "digits", "fake"} <= set(D.names())


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ValueError) as exc:
        D.load("imagenet21k", tmp_path)
    msg = one_line(exc)
    assert "imagenet21k" in msg and "cifar100" in msg and "tiny_imagenet" in msg


def check_split(split: D.Split, n: int, shape: tuple[int, ...]) -> None:
    assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
    assert tuple(split.images.shape) == (n, *shape) and len(split) == n
    assert split.labels.dtype == torch.int64 and tuple(split.labels.shape) == (n,)


def test_cifar10_format(cifar_root):
    ds = D.load("cifar10", cifar_root, val_fraction=0.1, seed=0)
    assert ds.name == "cifar10" and ds.num_classes == 10
    check_split(ds.train, 180, (3, 32, 32))
    check_split(ds.val, 20, (3, 32, 32))
    check_split(ds.test, 40, (3, 32, 32))
    for split in (ds.train, ds.val, ds.test):  # fixture stores the label in pixel [0, 0, 0]
        assert torch.equal(split.images[:, 0, 0, 0].long(), split.labels)
    assert ds.train.augment == ("crop", "flip", "rotate") and ds.train.rotation == 15


def test_cifar100_format_matches_torchvision_reader(cifar_root, monkeypatch):
    """Our numpy reader and torchvision's (md5 check bypassed) see the same data."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    ds = D.load("cifar100", cifar_root, val_fraction=0.0)
    assert ds.num_classes == 100
    ref = tv_cifar.CIFAR100(str(cifar_root), train=True)
    assert np.array_equal(ref.data.transpose(0, 3, 1, 2), ds.train.images.numpy())
    assert ref.targets == ds.train.labels.tolist()
    ref10 = tv_cifar.CIFAR10(str(cifar_root), train=False)
    test10 = D.load("cifar10", cifar_root).test
    assert np.array_equal(ref10.data.transpose(0, 3, 1, 2), test10.images.numpy())
    assert ref10.targets == test10.labels.tolist()


def test_val_split_stratified_disjoint_seeded(cifar_root):
    a = D.load("cifar10", cifar_root, val_fraction=0.25, seed=0)
    full = D.load("cifar10", cifar_root, val_fraction=0.0)
    ids_train, ids_val = sample_ids(a.train.images.numpy()), sample_ids(a.val.images.numpy())
    assert not set(ids_train) & set(ids_val)
    assert set(ids_train) | set(ids_val) == set(sample_ids(full.train.images.numpy()))
    assert torch.bincount(a.val.labels, minlength=10).tolist() == [5] * 10  # 25% of 20 per class
    assert torch.bincount(a.train.labels, minlength=10).tolist() == [15] * 10
    same = D.load("cifar10", cifar_root, val_fraction=0.25, seed=0)
    assert same is a  # cached per process
    D.clear_cache()
    again = D.load("cifar10", cifar_root, val_fraction=0.25, seed=0)
    assert again is not a and torch.equal(again.val.images, a.val.images)
    other = D.load("cifar10", cifar_root, val_fraction=0.25, seed=1)
    assert set(sample_ids(other.val.images.numpy())) != set(ids_val)
    assert torch.bincount(other.val.labels, minlength=10).tolist() == [5] * 10


def test_val_fraction_zero_gives_empty_val(cifar_root):
    ds = D.load("cifar10", cifar_root, val_fraction=0)
    check_split(ds.val, 0, (3, 32, 32))
    check_split(ds.train, 200, (3, 32, 32))


def test_stratified_split_proportional():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7)
    kept, held = D.stratified_split(labels, 0.2, seed=3)
    assert torch.bincount(labels[held]).tolist() == [20, 10, 1]
    assert sorted(kept.tolist() + held.tolist()) == list(range(157))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_bad_val_fraction(bad):
    with pytest.raises(ValueError) as exc:
        D.load("fake", ".", val_fraction=bad)
    assert "val_fraction" in one_line(exc)


@pytest.mark.parametrize(
    ("name", "holds", "downloads"),
    [
        ("cifar100", "cifar-100-python/", True),
        ("cifar10", "cifar-10-batches-py/", True),
        ("tiny_imagenet", "tiny-imagenet-200/", True),
        ("folder", "train/<class>/*.JPEG and val/<class>/*.JPEG", False),
        ("imagenet", "train/<class>/*.JPEG and val/<class>/*.JPEG", False),
    ],
)
def test_missing_root_says_what_it_holds_and_suggests_download_only_where_it_works(
    tmp_path, name, holds, downloads
):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as exc:
        D.load(name, missing)
    msg = one_line(exc)
    assert str(missing) in msg and holds in msg
    assert ("--download" in msg) == downloads


def test_missing_cifar_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        D.load("cifar10", tmp_path)
    msg = one_line(exc)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "--download" in msg


def test_missing_cifar_batch(tmp_path):
    base = write_cifar10(tmp_path, 1, 1)
    (base / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as exc:
        D.load("cifar10", tmp_path)
    assert str(base / "data_batch_3") in one_line(exc)


def test_truncated_pickle(tmp_path):
    base = write_cifar100(tmp_path, 1, 1)
    blob = (base / "train").read_bytes()
    (base / "train").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError) as exc:
        D.load("cifar100", tmp_path)
    msg = one_line(exc)
    assert str(base / "train") in msg and "corrupt or truncated" in msg
    assert not isinstance(exc.value, pickle_errors())


def pickle_errors() -> tuple[type, ...]:
    import pickle

    return (pickle.UnpicklingError, EOFError)


def test_download_uses_torchvision_archive(tmp_path, monkeypatch):
    """download=True fetches torchvision's md5-checked archive (faked here: no network)."""
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, filename, md5))
        write_cifar10(download_root, 1, 1)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    root = tmp_path / "new" / "data"
    ds = D.load("cifar10", root, download=True, val_fraction=0.0)
    assert len(ds.train) == 10 and calls[0][0].endswith("cifar-10-python.tar.gz") and calls[0][2]

    def failing_download(*args, **kwargs):
        raise RuntimeError("no route to host\nmore detail")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", failing_download)
    with pytest.raises(ValueError) as exc:
        D.load("cifar100", root, download=True)
    msg = one_line(exc)
    assert str(root) in msg and "no route to host" in msg


def test_an_offline_download_says_how_to_place_the_files_by_hand(tmp_path, monkeypatch):
    """The failed download names torchvision's archive and where it goes, and the folder it
    unpacks to with its files; the files placed as it says load without a network."""
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(ValueError) as exc:
        D.load("cifar100", root, download=True)
    msg = one_line(exc)
    assert tvd.CIFAR100.url in msg and f"put {tvd.CIFAR100.filename} in {root}" in msg
    base = write_cifar100(root, 1, 1)  # the unpacked archive, placed by hand
    named = msg.split(f"{base}/ (", 1)[1].split(")")[0].split(", ")
    for extra in set(p.name for p in base.iterdir()) - set(named):
        (base / extra).unlink()  # the files it names are enough
    assert len(D.load("cifar100", root, val_fraction=0.0).train) == 100


def test_tiny_imagenet_corrupt_jpeg(tmp_path):
    base = write_tiny_imagenet(tmp_path, 2, 2, 1)
    bad = sorted((base / "train").glob("*/images/*_1.JPEG"))[0]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError) as exc:
        D.load("tiny_imagenet", tmp_path)
    assert str(bad) in one_line(exc)


def test_tiny_imagenet_format_and_cache(tiny_root, monkeypatch):
    ds = D.load("tiny_imagenet", tiny_root, val_fraction=0.2, seed=0)
    assert ds.num_classes == 4
    check_split(ds.train, 32, (3, 64, 64))
    check_split(ds.val, 8, (3, 64, 64))
    check_split(ds.test, 12, (3, 64, 64))
    assert torch.bincount(ds.val.labels).tolist() == [2, 2, 2, 2]
    for split in (ds.train, ds.val, ds.test):  # label k <-> colour of sorted wnid k
        colours = split.images.double().mean(dim=(2, 3))
        for colour, label in zip(colours, split.labels.tolist(), strict=True):
            gray = float(np.dot(class_colour(label), (0.299, 0.587, 0.114)))
            rgb_ok = torch.allclose(colour, torch.tensor(class_colour(label)).double(), atol=4)
            gray_ok = torch.allclose(colour, torch.full((3,), gray).double(), atol=4)
            assert rgb_ok or gray_ok
    assert (tiny_root / "tiny-imagenet-200.cache.npz").is_file()
    assert sorted(tiny_wnids(4)) != tiny_wnids(4)  # the fixture's wnids.txt is unsorted

    import tfkd.core.data.sources as sources

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded JPEGs although the cache is valid")

    monkeypatch.setattr(sources, "_decode_jpegs", no_decoding)
    D.clear_cache()
    again = D.load("tiny_imagenet", tiny_root, val_fraction=0.2, seed=0)
    assert torch.equal(again.train.images, ds.train.images)
    assert torch.equal(again.test.labels, ds.test.labels)


def test_tiny_imagenet_grayscale_becomes_three_channels(tiny_root):
    full = D.load("tiny_imagenet", tiny_root, val_fraction=0.0).train
    same = (full.images[:, 0] == full.images[:, 1]) & (full.images[:, 1] == full.images[:, 2])
    assert int(same.all(dim=(1, 2)).sum()) == 4  # one grayscale image per class


def test_tiny_imagenet_missing_annotations(tmp_path):
    base = write_tiny_imagenet(tmp_path, 2, 2, 1)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError) as exc:
        D.load("tiny_imagenet", tmp_path)
    assert str(base / "val" / "val_annotations.txt") in one_line(exc)


def test_digits_fixed_test_split_and_stats():
    a = D.load("digits", "unused", seed=0)
    b = D.load("digits", "/elsewhere", seed=1)
    assert a.num_classes == 10 and a.train.augment == ("crop",)
    check_split(a.test, len(a.test), (3, 32, 32))
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert not torch.equal(a.val.images, b.val.images)  # the val split follows `seed`
    assert 0.19 < len(a.test) / 1797 < 0.21
    full = D.load("digits", ".", val_fraction=0.0).train
    check_normalised(full, tolerance=1e-3)


def test_fake_is_deterministic_and_learnable():
    ds = D.load("fake", ".", fake_size=400, val_fraction=0.0)
    assert ds.num_classes == 10 and len(ds.train) == 400 and len(ds.test) == 100
    assert ds.train.augment == ("crop", "flip")
    D.clear_cache()
    again = D.load("fake", ".", fake_size=400, val_fraction=0.0)
    assert torch.equal(again.train.images, ds.train.images)
    # nearest class-mean (of mean colours) classifies the test set: the classes are learnable
    feats = ds.train.images.double().mean(dim=(2, 3))
    centres = torch.stack([feats[ds.train.labels == k].mean(0) for k in range(10)])
    test_feats = ds.test.images.double().mean(dim=(2, 3))
    pred = torch.cdist(test_feats, centres).argmin(1)
    assert (pred == ds.test.labels).double().mean() > 0.9
    check_normalised(ds.train, tolerance=1e-3)


def check_normalised(split: D.Split, tolerance: float) -> None:
    """An un-augmented eval pass over the whole split has per-channel mean ~0 and std ~1."""
    loader = D.DeviceLoader(split, batch_size=97, train=False)
    x = torch.cat([images for images, _ in loader]).double()
    assert x.shape[0] == len(split)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=tolerance)
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=tolerance)


# ---------------------------------------------------------------------------------- augment


def test_parse_augment():
    split = D.load("fake", ".", fake_size=40).train
    assert D.parse_augment("default", split) == ("crop", "flip")
    assert D.parse_augment(None, split) == D.parse_augment("none", split) == ()
    assert D.parse_augment("", split) == ()
    assert D.parse_augment("rotate, crop", split) == ("crop", "rotate")
    assert D.parse_augment(["flip"], split) == ("flip",)
    with pytest.raises(ValueError) as exc:
        D.parse_augment("crop,cutout", split)
    msg = one_line(exc)
    assert "cutout" in msg and "crop" in msg and "flip" in msg and "rotate" in msg
    with pytest.raises(ValueError, match="cutout"):
        D.DeviceLoader(split, batch_size=8, train=True, augment="cutout")


def test_augment_distributions():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2000, 3, 8, 8), dtype=torch.uint8, generator=gen)
    out, p = D.augment_batch(x, ("crop", "flip", "rotate"), gen, return_params=True)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert p.offsets.min() == -4 and p.offsets.max() == 4  # every shift in [-4, 4] occurs
    counts = torch.bincount((p.offsets + 4).flatten(), minlength=9)
    assert counts.min() > 4000 / 9 * 0.7
    assert 0.4 < p.flip.float().mean() < 0.6
    assert p.angles.abs().max() <= 15.0 and p.angles.min() < -13 and p.angles.max() > 13
    assert abs(float(p.angles.mean())) < 1.0


def reference(x: torch.Tensor, p: AugmentParams, i: int) -> torch.Tensor:
    """torchvision's functional transforms in the original order, for sample i."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = x[i]
    h, w = img.shape[1:]
    if p.offsets is not None:
        dy, dx = p.offsets[i].tolist()
        img = TF.crop(TF.pad(img, p.pad), p.pad + dy, p.pad + dx, h, w)
    if p.flip is not None and bool(p.flip[i]):
        img = TF.hflip(img)
    if p.angles is not None:
        img = TF.rotate(img, float(p.angles[i]), interpolation=InterpolationMode.NEAREST)
    return img.float()


@pytest.mark.parametrize(
    "names", [("crop",), ("flip",), ("crop", "flip"), ("rotate",), ("crop", "flip", "rotate")]
)
def test_augment_matches_torchvision(names):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=gen)
    out, p = D.augment_batch(x, names, gen, return_params=True)
    ref = torch.stack([reference(x, p, i) for i in range(x.shape[0])])
    mismatch = (out != ref).float().mean().item()
    if "rotate" in names:  # float ties at the crop window's edge may flip a pixel or two
        assert mismatch < 1e-4
    else:
        assert mismatch == 0.0


# ---------------------------------------------------------------------------------- loaders


@pytest.fixture(scope="module")
def fake_split():
    return D.load("fake", ".", fake_size=300, val_fraction=0.0).train


def test_device_loader_seeded_batches(fake_split):
    def epoch(loader, e):
        loader.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in loader]

    a = D.DeviceLoader(fake_split, batch_size=64, train=True, seed=5, augment="crop,flip,rotate")
    b = D.DeviceLoader(fake_split, batch_size=64, train=True, seed=5, augment="crop,flip,rotate")
    assert len(a) == 5
    e0, e0_again, e1 = epoch(a, 0), epoch(b, 0), epoch(a, 1)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(e0, e0_again, strict=True))
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(e0, e0_again, strict=True))
    assert not torch.equal(torch.cat([y for _, y in e0]), torch.cat([y for _, y in e1]))
    assert sorted(torch.cat([y for _, y in e0]).tolist()) == sorted(fake_split.labels.tolist())
    assert e0[0][0].dtype == torch.float32 and e0[0][1].dtype == torch.int64
    # no set_epoch: each pass is the next epoch; set_epoch(0) replays epoch 0 (resume)
    a.set_epoch(0)
    list(a)
    assert torch.equal(next(iter(a))[1], e1[0][1])
    c = D.DeviceLoader(fake_split, batch_size=64, train=True, seed=6, augment="crop,flip,rotate")
    assert not torch.equal(epoch(c, 0)[0][1], e0[0][1])


def test_device_loader_drop_last_and_eval(fake_split):
    train = D.DeviceLoader(fake_split, batch_size=64, train=True, drop_last=True)
    assert len(train) == 4 and sum(y.shape[0] for _, y in train) == 256
    ev = D.DeviceLoader(fake_split, batch_size=64, train=False, drop_last=True, augment="rotate")
    assert len(ev) == 5 and ev.augment == ()
    assert torch.equal(torch.cat([y for _, y in ev]), fake_split.labels)


def test_device_and_classic_agree(fake_split):
    kw = dict(batch_size=64, seed=3)
    dev = D.make_loader("device", fake_split, train=False, augment="none", **kw)
    cls = D.make_loader("classic", fake_split, train=False, augment="none", **kw)
    assert isinstance(dev, D.DeviceLoader) and isinstance(cls, D.ClassicLoader)
    assert len(dev) == len(cls)
    for (xd, yd), (xc, yc) in zip(dev, cls, strict=True):
        assert torch.equal(yd, yc) and torch.allclose(xd, xc, atol=1e-5)
    dev = D.make_loader("device", fake_split, train=True, **kw)
    cls = D.make_loader("classic", fake_split, train=True, **kw)
    for e in (0, 1):
        dev.set_epoch(e)
        cls.set_epoch(e)
        labels_d = collections.Counter(torch.cat([y for _, y in dev]).tolist())
        labels_c = collections.Counter(torch.cat([y for _, y in cls]).tolist())
        assert labels_d == labels_c == collections.Counter(fake_split.labels.tolist())


def test_device_and_classic_same_augmentation_work():
    """On white images, the share of zero (padded/rotated-in) pixels matches between loaders."""
    n = 768
    white = D.Split(
        torch.full((n, 3, 32, 32), 255, dtype=torch.uint8),
        torch.zeros(n, dtype=torch.int64),
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        ("crop", "flip", "rotate"),
    )
    shares = {}
    for kind in ("device", "classic"):
        loader = D.make_loader(kind, white, batch_size=128, train=True, seed=0)
        x = torch.cat([images for images, _ in loader])
        shares[kind] = float((x == 0).float().mean())
    # E[zero share]: crop |dy|,|dx| ~ U{0..4} -> ~11%, plus rotation corners -> ~18% in all
    assert 0.12 < shares["device"] < 0.25
    assert math.isclose(shares["device"], shares["classic"], abs_tol=0.01)


def test_classic_loader_seeded_and_isolated(fake_split):
    loader = D.ClassicLoader(fake_split, batch_size=100, train=True, seed=2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loader.set_epoch(0)
    first = [x for x, _ in loader]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    loader.set_epoch(0)
    second = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_make_loader_unknown_kind(fake_split):
    with pytest.raises(ValueError) as exc:
        D.make_loader("dali", fake_split, batch_size=8, train=True)
    msg = one_line(exc)
    assert "dali" in msg and "device" in msg and "classic" in msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_loader_on_cuda(fake_split):
    loader = D.DeviceLoader(fake_split, batch_size=64, train=True, device="cuda", seed=0)
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32


# ------------------------------------------------------------- the original's recipe per dataset
# The values are the original's data_loader.py (fetch_dataloader), typed here from it.
ORIGINAL_CIFAR_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
ORIGINAL_CIFAR_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
ORIGINAL_TINY_MEAN, ORIGINAL_TINY_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)


def normalised_by_hand(images: torch.Tensor, mean, std) -> torch.Tensor:
    """ToTensor() then Normalize(mean, std), one pixel at a time in float64."""
    x = images.double() / 255.0
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)


def evaluated(split) -> torch.Tensor:
    """The un-augmented, normalised images a trial evaluates on (the device loader)."""
    loader = D.make_loader("device", split, batch_size=len(split), train=False)
    return torch.cat([x for x, _ in loader]).double()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_10_and_100_are_normalised_with_the_originals_cifar100_constants(cifar_root, dataset):
    split = D.load(dataset, cifar_root, val_fraction=0.0).test
    expected = normalised_by_hand(split.images, ORIGINAL_CIFAR_MEAN, ORIGINAL_CIFAR_STD)
    torch.testing.assert_close(evaluated(split), expected, rtol=0, atol=1e-5)


def test_tiny_imagenet_is_normalised_with_its_own_statistics(tiny_root):
    split = D.load("tiny_imagenet", tiny_root, val_fraction=0.0).test
    expected = normalised_by_hand(split.images, ORIGINAL_TINY_MEAN, ORIGINAL_TINY_STD)
    torch.testing.assert_close(evaluated(split), expected, rtol=0, atol=1e-5)


def test_tiny_imagenet_trains_with_rotation_20_and_flip_and_no_crop(tiny_root):
    """A 64 x 64 black image with a white 2 x 2 block at its centre and a 4 x 4 block 24 pixels
    to the right of the centre.

    Rotation about the centre by a, then a flip, move the outer block to angle +-a (mirrored) and
    leave the centre block where it is; a crop (a shift) would move it. Over 4,000 draws the
    largest angle seen is close to 20 degrees (the CIFAR recipe's is 15), half are mirrored.
    """
    train = D.load("tiny_imagenet", tiny_root, val_fraction=0.0).train
    assert train.augment == ("flip", "rotate") and train.rotation == 20
    image = torch.zeros((1, 3, 64, 64), dtype=torch.uint8)
    image[0, :, 31:33, 31:33] = 255
    image[0, :, 30:34, 54:58] = 255  # centre (31.5, 55.5): radius 24
    n = 4000
    split = dataclasses.replace(
        train, images=image.expand(n, -1, -1, -1).contiguous(), labels=torch.zeros(n).long()
    )
    loader = D.make_loader("device", split, batch_size=n, train=True, seed=3)
    ((x, _),) = list(loader)
    bright = (x[:, 0] > x[:, 0].min() + 1).double()  # N x H x W: where the white pixels landed
    assert bright[:, 31:33, 31:33].bool().all()  # the centre stays: no crop
    ys, xs = torch.meshgrid(torch.arange(64.0) - 31.5, torch.arange(64.0) - 31.5, indexing="ij")
    outer = bright * (xs.abs() > 8)
    mass = outer.sum(dim=(1, 2))
    assert (mass > 0).all()
    cy, cx = (outer * ys).sum(dim=(1, 2)) / mass, (outer * xs).sum(dim=(1, 2)) / mass
    angles = torch.rad2deg(torch.atan2(-cy, cx.abs()))
    assert 18.5 < angles.abs().max() < 21.0
    assert 0.45 < (cx < 0).double().mean() < 0.55  # RandomHorizontalFlip(0.5)
