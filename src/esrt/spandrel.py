"""ESRT for spandrel (chaiNNer, ComfyUI and other tools): key-based detection, loading, one registration call.

Follows spandrel's Architecture API (spandrel >= 0.4); the key sets come from esrt.model and the reference key
table of esrt.convert, the scale from tensor shapes (esrt.convert.detect_scale). Needs `pip install esrt[spandrel]`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchSupport,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
    StateDict,
)

from esrt.convert import convert_reference, detect_scale, to_reference
from esrt.model import ESRT, SCALES, configure_attention

ARCH_ID = "ESRT"
# ESRT runs on any H, W >= 2 (esrt.model.ESRT.check_input); spandrel pads smaller inputs up to this.
MIN_SIDE = 2
# The whole network cast to fp16 or bf16 (descriptor.half(), .bfloat16()) stays finite, within 0.02 dB of fp32 on
# Set5 x4 (31.208 dB fp16, 31.205 bf16, 31.224 fp32; features peak near 10, far below fp16's 65504).
SUPPORTS_HALF = True
SUPPORTS_BFLOAT16 = True


@functools.cache
def layout_keys() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """For each layout ("esrt", "reference"): (keys every scale has, keys some scale has)."""
    per_scale: dict[str, list[frozenset[str]]] = {"esrt": [], "reference": []}
    for scale in SCALES:
        with torch.device("meta"):  # shapes only: nothing is allocated
            model = ESRT(scale)
        per_scale["esrt"].append(frozenset(model.state_dict()))
        per_scale["reference"].append(frozenset(to_reference(model)))
    return {name: (frozenset.intersection(*sets), frozenset.union(*sets)) for name, sets in per_scale.items()}


def without_module_prefix(state_dict: Mapping[str, object]) -> dict[str, object]:
    """The state dict with the `module.` prefix of DataParallel checkpoints removed (when every key has it)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k.removeprefix("module."): v for k, v in state_dict.items()}
    return dict(state_dict)


def layout(state_dict: Mapping[str, object]) -> str | None:
    """ "esrt" or "reference" when the keys are exactly those of an ESRT state dict of that layout, else None."""
    keys = without_module_prefix(state_dict).keys()
    for name, (required, allowed) in layout_keys().items():
        if required.issubset(keys) and allowed.issuperset(keys):
            return name
    return None


def detect(state_dict: Mapping[str, object]) -> bool:
    """True when state_dict holds ESRT weights, in our layout or the reference's (with or without `module.`)."""
    return layout(state_dict) is not None


class ESRTArch(Architecture[ESRT]):
    """spandrel's description of ESRT: detects both checkpoint layouts and builds the model at the right scale."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name="ESRT", detect=detect)

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[ESRT]:
        sd: dict[str, torch.Tensor] = without_module_prefix(state_dict)  # type: ignore[assignment]
        if layout(sd) == "reference":
            model = convert_reference(sd, source="state dict")
            weights = model.state_dict()
        else:
            model = ESRT(detect_scale(sd))
            weights = sd
        # Attention in the weights' dtype: a network cast to fp16/bf16 then runs in that dtype throughout; in fp32
        # (without autocast) this is the paper's attention, bit for bit.
        configure_attention(model, low_precision=True)
        return ImageModelDescriptor(
            model,
            weights,  # loaded (strictly: every key, every shape) by the descriptor
            architecture=self,
            purpose="SR",
            tags=[],
            supports_half=SUPPORTS_HALF,
            supports_bfloat16=SUPPORTS_BFLOAT16,
            scale=model.scale,
            input_channels=3,
            output_channels=3,
            size_requirements=SizeRequirements(minimum=MIN_SIDE),
            tiling=ModelTiling.SUPPORTED,
        )


def register() -> ArchSupport:
    """Adds ESRT to spandrel's MAIN_REGISTRY, once (later calls change nothing); returns its registry entry."""
    if ARCH_ID not in MAIN_REGISTRY:
        MAIN_REGISTRY.add(ArchSupport.from_architecture(ESRTArch()))
    return MAIN_REGISTRY[ARCH_ID]
