"""esrt.spandrel: spandrel's ModelLoader finds ESRT in both checkpoint layouts and runs it as esrt does.

The false-positive check builds the networks of spandrel's own architectures in-process and offers their keys.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from esrt.pretrained import load_model, shipped_weights

from .conftest import IN_CI, fixture_path


def _stand_in_torchvision() -> None:
    """Registers a torchvision with only the names spandrel imports at start-up, unusable when called.

    spandrel imports torchvision for two image-restoration architectures (LaMa, RestoreFormer) and nothing else;
    PyPI has no torchvision that imports beside a CPU-only PyTorch build, so the tests install spandrel without
    its dependencies and stand in for those names. ESRT never calls them.
    """
    import enum
    import sys
    import types

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torchvision stand-in: not available in the tests")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")  # type: ignore[attr-defined]
    functional.rotate = unavailable  # type: ignore[attr-defined]
    functional.normalize = unavailable  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    root = types.ModuleType("torchvision")
    root.transforms = transforms  # type: ignore[attr-defined]
    sys.modules.update(
        {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
    )


try:
    try:
        import torchvision  # noqa: F401  # pyright: ignore[reportMissingImports]
    except Exception:  # absent, or built for another PyTorch
        _stand_in_torchvision()
    import spandrel
except Exception as exc:  # spandrel not installed
    if IN_CI:
        raise
    pytest.skip(
        f"spandrel is not importable ({type(exc).__name__}: {exc}): pip install 'esrt[spandrel]'",
        allow_module_level=True,
    )

from esrt import spandrel as esrt_spandrel  # noqa: E402 (after the spandrel import check)

SCALES = (2, 3, 4)


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    esrt_spandrel.register()


def _image(h: int, w: int) -> torch.Tensor:
    """A smooth deterministic colour image (1, 3, h, w) in [0, 1]: gradients and slow waves, like a photo crop."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    channels = [0.5 + 0.4 * torch.sin(6 * x + 3 * y + k) * torch.cos(4 * y - k) for k in range(3)]
    return torch.stack(channels)[None].float()


def _load(path: Path) -> spandrel.ImageModelDescriptor[Any]:
    """spandrel's loader on path; ESRT must come back as an image-to-image model."""
    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    return descriptor


def _esrt_output(weights: Path | None, scale: int, x: torch.Tensor) -> torch.Tensor:
    model = load_model(weights, scale=scale)
    with torch.inference_mode():
        return model(x).clamp(0, 1)


def test_esrt_module_does_not_shadow_spandrel() -> None:
    assert spandrel.__name__ == "spandrel"
    assert "esrt" not in Path(spandrel.__file__).parts
    assert esrt_spandrel.MAIN_REGISTRY is spandrel.MAIN_REGISTRY


def test_register_adds_esrt_once() -> None:
    count = len(spandrel.MAIN_REGISTRY)
    entry = esrt_spandrel.register()
    assert len(spandrel.MAIN_REGISTRY) == count
    assert entry.architecture.id == "ESRT"
    assert spandrel.MAIN_REGISTRY["ESRT"] is entry


@pytest.mark.parametrize("prefixed", [False, True], ids=["plain", "module-prefix"])
@pytest.mark.parametrize("scale", SCALES)
def test_loader_reads_reference_checkpoint(scale: int, prefixed: bool, tmp_path: Path) -> None:
    path = fixture_path(f"esrt_x{scale}_random.pth")
    if prefixed:
        state = torch.load(path, map_location="cpu", weights_only=True)
        path = tmp_path / "prefixed.pth"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    descriptor = _load(path)
    assert (descriptor.architecture.id, descriptor.purpose, descriptor.scale) == ("ESRT", "SR", scale)
    assert (descriptor.input_channels, descriptor.output_channels) == (3, 3)
    io = np.load(fixture_path(f"esrt_x{scale}_io.npz"))
    x = torch.from_numpy(io["in_48x48"])
    out = descriptor(x)
    assert out.shape == (1, 3, 48 * scale, 48 * scale)
    reference = torch.from_numpy(io["out_48x48"]).clamp(0, 1)  # the reference code's output; spandrel clamps
    assert (out - reference).abs().max().item() <= 1e-5
    assert (out - _esrt_output(path, scale, x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scale", SCALES)
def test_loader_reads_shipped_safetensors(scale: int) -> None:
    descriptor = _load(shipped_weights(scale))
    assert (descriptor.architecture.id, descriptor.scale) == ("ESRT", scale)
    assert descriptor.tiling is spandrel.ModelTiling.SUPPORTED
    x = _image(20, 26)
    out = descriptor(x)
    assert out.shape == (1, 3, 20 * scale, 26 * scale)
    assert (out - _esrt_output(None, scale, x)).abs().max().item() <= 1e-5


def test_inputs_below_the_minimum_are_padded_and_cropped_back() -> None:
    descriptor = _load(shipped_weights(2))
    assert descriptor.size_requirements.minimum == 2
    assert descriptor(_image(1, 5)).shape == (1, 3, 2, 10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_close_to_fp32(dtype: torch.dtype) -> None:
    descriptor = _load(shipped_weights(4))
    assert descriptor.supports_half and descriptor.supports_bfloat16
    x = _image(16, 16)
    fp32 = descriptor(x)
    low = descriptor.to(dtype)(x.to(dtype)).float()
    assert torch.isfinite(low).all()
    assert (low - fp32).abs().mean().item() < 1 / 255


def _other_architectures_keys() -> dict[str, dict[str, Any]]:
    """State dicts of the networks of spandrel's built-in architectures, built with their defaults."""
    required = {
        "SPAN": {"num_in_ch": 3, "num_out_ch": 3},
        "SAFMN": {"dim": 36},
        "SAFMN_BCIE": {"dim": 36},
        "MMRRDBNet_test": {"num_in_ch": 3, "num_out_ch": 3},
        "SwinIR": {"window_size": 8},
        "Swin2SR": {"window_size": 8},
    }
    found: dict[str, dict[str, Any]] = {}
    for support in spandrel.MAIN_REGISTRY.architectures():
        if support.architecture.id == "ESRT":
            continue
        module = importlib.import_module(type(support.architecture).__module__)
        for name in getattr(module, "__all__", []):
            cls = getattr(module, name)
            if not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)):
                continue
            for device in ("meta", "cpu"):  # meta allocates nothing; a few networks compute buffers at init
                try:
                    with torch.device(device):
                        found[f"{support.architecture.id}.{name}"] = cls(**required.get(cls.__name__, {})).state_dict()
                    break
                except Exception:  # a network that needs arguments this list does not give: not offered
                    continue
    return found


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.meshgrid notes from other networks
def test_detect_claims_no_other_architecture() -> None:
    others = _other_architectures_keys()
    assert len(others) >= 35, sorted(others)
    claimed = [name for name, state in others.items() if esrt_spandrel.detect(state)]
    assert claimed == []
    for name, state in others.items():  # a DataParallel prefix changes nothing
        assert not esrt_spandrel.detect({f"module.{k}": v for k, v in state.items()}), name


def test_detect_needs_exactly_the_esrt_keys() -> None:
    state = load_model(scale=3).state_dict()
    assert esrt_spandrel.detect(state)
    assert esrt_spandrel.detect({f"module.{k}": v for k, v in state.items()})
    assert not esrt_spandrel.detect({k: v for k, v in state.items() if k != "ltb.et.emha.qkv.weight"})
    assert not esrt_spandrel.detect({**state, "discriminator.weight": torch.zeros(1)})
    assert not esrt_spandrel.detect({})
