"""Tests for the tfkd.core.models registry and the CIFAR model zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tfkd.core.models as models

# Parameter counts at num_classes=100. The first nine are those of the authors' reference
# implementation (yuanli2333/Teacher-free-Knowledge-Distillation, model/); cnn and resnet8 were
# measured here; resnet20/32/56/110 are He et al.'s CIFAR ResNets (their classic 10-class counts
# below, + 64 x 90 + 90 for 100 classes).
PARAMS_100 = {
    "resnet18": 11_220_132,
    "resnet34": 21_328_292,
    "resnet50": 23_705_252,
    "resnet101": 42_697_380,
    "mobilenet_v2": 2_369_380,
    "shufflenet_v2": 1_360_896,
    "googlenet": 6_258_500,
    "densenet121": 7_048_548,
    "resnext29": 34_518_948,
    "cnn": 369_124,
    "resnet8": 81_140,
    "resnet20": 275_572,
    "resnet32": 470_004,
    "resnet56": 858_868,
    "resnet110": 1_733_812,
}

# Models whose 64x64 forward runs without autograd to keep the suite fast.
BIG = {"resnet110", "resnet34", "resnet50", "resnet101", "densenet121", "googlenet", "resnext29"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_names_lists_all_models_sorted() -> None:
    assert models.paper_names() == sorted(PARAMS_100)


@pytest.mark.parametrize("name", models.paper_names())
def test_param_count(name: str) -> None:
    assert n_params(models.build(name, 100)) == PARAMS_100[name]


@pytest.mark.parametrize(
    ("name", "count"),
    [("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018), ("resnet110", 1_727_962)],
)
def test_the_cifar_resnets_have_their_classic_sizes(name: str, count: int) -> None:
    """0.27M, 0.46M, 0.85M and 1.7M parameters on CIFAR-10 (He et al., 2016, Table 6)."""
    assert n_params(models.build(name, 10)) == count


@pytest.mark.parametrize("name", models.paper_names())
def test_forward_backward_32_and_forward_64(name: str) -> None:
    model = models.build(name, 100).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    logits = model(x)
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    x64 = torch.randn(2, 3, 64, 64)
    with torch.set_grad_enabled(name not in BIG):
        logits64 = model(x64)
    assert logits64.shape == (2, 100)
    assert torch.isfinite(logits64).all()


@pytest.mark.parametrize("name", ["resnet8", "shufflenet_v2", "mobilenet_v2", "cnn"])
def test_channels_last_matches_contiguous(name: str) -> None:
    model = models.build(name, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", models.paper_names())
def test_num_classes_changes_only_the_classifier(name: str) -> None:
    sd100 = models.build(name, 100).state_dict()
    sd10 = models.build(name, 10).state_dict()
    assert sd100.keys() == sd10.keys()
    changed = {k for k in sd100 if sd100[k].shape != sd10[k].shape}
    assert changed == {"classifier.weight", "classifier.bias"}
    assert sd10["classifier.weight"].shape[0] == 10
    assert sd10["classifier.bias"].shape == (10,)


def test_unknown_name() -> None:
    with pytest.raises(ValueError) as info:
        models.build("foo", 10)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"unknown model 'foo'; known models: {', '.join(models.names())}"
    assert message.startswith("unknown model 'foo'; known models: cnn, densenet121, ")


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        models.build("resnet8", num_classes)  # type: ignore[arg-type]


def test_register_and_duplicate() -> None:
    name = "_test_tiny_linear"

    @models.register(name)
    def tiny(num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert name in models.names()
        assert isinstance(models.build(name, 3), nn.Sequential)
        with pytest.raises(ValueError, match="already registered"):
            models.register(name)(tiny)
        with pytest.raises(ValueError, match="already registered"):
            models.register("resnet18")
    finally:
        from tfkd.core.models import registry

        registry.MODELS.remove(name)
    assert name not in models.names()


@pytest.mark.parametrize("name", models.paper_names())
def test_device_agnostic_on_meta(name: str) -> None:
    """Built and run under a non-CPU default device: nothing may pin tensors to a device."""
    with torch.device("meta"):
        model = models.build(name, 100)
        logits = model(torch.empty(2, 3, 64, 64))
    assert logits.device.type == "meta"
    assert logits.shape == (2, 100)
