"""Image folders of real JPEG files (ImageNet's layout), the jpeg loader, torchvision models and
pretrained teachers: end to end through tune_main where a user would see it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_images import CLASSES, class_colour, write_image_folder

from tfkd.core import data, models
from tfkd.core.config import TrialConfig
from tfkd.core.data import images
from tfkd.core.data.core import DataError
from tfkd.core.train import load_teacher

from conftest import assert_ok, assert_one_line, clean_env, tune_main

FOLDER_RUN = (
    "--mode baseline --dataset folder --model resnet8 --fixed --epochs 2 --no-tracking "
    "--set image_size=32 --set batch_size=8 --set num_workers=1"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "imgs")


def fresh(folder: Path, tmp_path: Path) -> Path:
    """A private copy of the image folder that a test may break."""
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "imgs"))


# ---------------------------------------------------------------- the folder, end to end


@pytest.mark.slow  # a real sweep: starts a Ray cluster
def test_an_image_folder_trains_through_tune_main_with_the_imagenet_recipe(folder, tmp_path):
    done = tune_main(FOLDER_RUN, data_dir=str(folder), name="img", cwd=tmp_path)
    assert_ok(done)
    best = yaml.safe_load((tmp_path / "ray_results" / "img" / "best_config.yaml").read_text())
    config = best["config"]
    # the original's ImageNet recipe, chosen by the dataset
    assert (config["lr_batch"], config["weight_decay"], config["lr_gamma"]) == (256, 1e-4, 0.1)
    assert config["warmup_epochs"] == 0 and config["lr_milestones"] == "0.33334,0.66667,0.88889"
    (trial,) = (tmp_path / "ray_results" / "img").glob("trial_*")
    last = json.loads((trial / "result.json").read_text().splitlines()[-1])
    assert last["epoch"] == 2
    assert last["train_images"] == 36  # 40 training images, 4 held out for validation
    assert last["test_accuracy"] <= last["test_top5_accuracy"] == 100.0  # 4 classes


def test_folder_labels_follow_the_sorted_class_folders(folder):
    ds = data.load("folder", folder, val_fraction=0.2, seed=3)
    assert ds.num_classes == len(CLASSES)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 12)
    assert torch.bincount(ds.val.labels).tolist() == [2, 2, 2, 2]  # stratified
    loader = data.make_loader("device", ds.test, batch_size=5, train=False, image_size=32)
    mean = torch.tensor(ds.test.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.test.std).view(1, 3, 1, 1)
    for x, y in loader:  # each image's colour is its class's (the fixture's own colours)
        rgb = ((x * std + mean) * 255).mean(dim=(2, 3))
        expected = torch.tensor([class_colour(int(k)) for k in y], dtype=torch.float32)
        assert (rgb - expected).abs().max() < 8


def test_a_global_batch_is_the_same_however_it_is_split_or_decoded(folder):
    split = data.load("folder", folder).train

    def epoch(**options) -> list[torch.Tensor]:
        loader = data.make_loader(
            "device", split, batch_size=8, train=True, seed=5, image_size=24, **options
        )
        loader.set_epoch(3)
        return [x for x, _ in loader]

    whole = epoch(drop_last=True)
    halves = [epoch(drop_last=True, shard=(r, 2)) for r in range(2)]
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][k], halves[1][k]]), batch)
    assert all(torch.equal(a, b) for a, b in zip(epoch(num_workers=2), epoch(), strict=True))


def test_random_resized_crop_keeps_torchvisions_bounds():
    gen = torch.Generator().manual_seed(0)
    for _ in range(500):
        top, left, h, w = images.random_resized_crop(300, 400, gen)
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        assert 0.08 * 0.999 <= h * w / (300 * 400) <= 1.0
        assert math.log(3 / 4) - 0.02 <= math.log(w / h) <= math.log(4 / 3) + 0.02


# ---------------------------------------------------------------- bad folders and files


def _break_corrupt(root: Path) -> str:
    bad = root / "train" / CLASSES[1] / "broken.JPEG"
    bad.write_bytes(b"this is not an image")
    return str(bad)


def _break_mismatch(root: Path) -> str:
    (root / "val" / CLASSES[2]).rename(root / "val" / "n09999999")
    return str(root / "val")


@pytest.mark.parametrize("breaker", [_break_corrupt, _break_mismatch])
def test_a_bad_folder_is_one_line_before_anything_starts(folder, tmp_path, breaker):
    root = fresh(folder, tmp_path)
    named = breaker(root)
    done = tune_main(FOLDER_RUN, data_dir=str(root), name="bad", cwd=tmp_path)
    assert done.returncode == 2
    assert_one_line(done.stderr, named)
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize(
    "breaker, needle",
    [
        (lambda r: (r / "val").rename(r / "valid"), "not found"),
        (lambda r: [p.unlink() for p in (r / "train" / CLASSES[0]).iterdir()], "empty class"),
        (lambda r: (r / "train" / CLASSES[0] / "x.png").write_bytes(b"\x89PNG"), "x.png"),
    ],
)
def test_folder_problems_name_the_folder_or_file(folder, tmp_path, breaker, needle):
    root = fresh(folder, tmp_path)
    breaker(root)
    data.clear_cache()
    with pytest.raises((DataError, FileNotFoundError), match=needle):
        data.load("folder", root)


def test_an_undecodable_jpeg_mid_epoch_fails_naming_the_file(folder, tmp_path):
    root = fresh(folder, tmp_path)
    bad = root / "val" / CLASSES[0] / f"{CLASSES[0]}_0001.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])  # the JPEG header survives, the image does not
    data.clear_cache()
    split = data.load("folder", root).test
    loader = data.make_loader("device", split, batch_size=4, train=False, image_size=32)
    with pytest.raises(DataError, match=str(bad)):
        list(loader)


# ---------------------------------------------------------------- torchvision models, teachers

# torchvision's documented parameter counts of its ImageNet models (1000 classes).
TORCHVISION_PARAMS = {
    "tv_resnet18": 11_689_512,
    "tv_resnet50": 25_557_032,
    "tv_densenet121": 7_978_856,
    "tv_mobilenet_v2": 3_504_872,
    "tv_resnext101_32x8d": 88_791_336,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_architectures_by_name(name):
    with torch.device("meta"):
        model = models.build(name, 1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]


def test_a_torchvision_architecture_trains_a_step():
    torch.manual_seed(0)
    model = models.build("tv_resnet18", 4).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    before = model.fc.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item()) and not torch.equal(model.fc.weight, before)


RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A private TORCH_HOME holding a locally saved resnet18 weights file under torchvision's
    name for its pretrained weights (random weights: the path, not the values, is tested)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch-home")
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, home / "hub" / "checkpoints" / RESNET18_FILE)
    return home


def test_a_pretrained_teacher_loads_from_torchs_cache(torch_home, monkeypatch):
    import torchvision

    from tfkd.sweep import teachers

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    request = teachers.TeacherRequest("kd", "imagenet", "tv_resnet18", "resnet18@torchvision")
    teacher = teachers.resolve(request, None)
    assert teacher.location == str(torch_home / "hub" / "checkpoints" / RESNET18_FILE)
    cfg = TrialConfig.from_dict(
        {"mode": "kd", "teacher": teacher.model, "teacher_checkpoint": teacher.location}
    )
    loaded = load_teacher(cfg, 1000, torch.device("cpu"))
    reference = torchvision.models.resnet18(num_classes=1000).eval()
    reference.load_state_dict(torch.load(teacher.location, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_a_pretrained_teacher_that_is_not_cached_is_one_line(folder, tmp_path):
    env = clean_env(TORCH_HOME=str(tmp_path / "empty-torch-home"))
    done = tune_main(
        FOLDER_RUN.replace("baseline", "kd"), teacher="resnet18@torchvision",
        data_dir=str(folder), cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert_one_line(done.stderr, RESNET18_FILE, str(tmp_path / "empty-torch-home" / "hub"))


def test_a_pretrained_teacher_of_other_classes_is_one_line(folder, tmp_path, torch_home):
    env = clean_env(TORCH_HOME=str(torch_home))
    done = tune_main(
        FOLDER_RUN.replace("baseline", "kd"), teacher="resnet18@torchvision",
        data_dir=str(folder), cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert_one_line(done.stderr, "do not fit a tv_resnet18 with 4 classes")
