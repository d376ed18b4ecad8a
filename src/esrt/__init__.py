"""esrt: ESRT (Lu et al., CVPR-W 2022) for single image super-resolution, reference-exact and memory-lean.

Imports are lazy: `import esrt` does not import torch until a model function is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ESRT": "esrt.model",
    "load_model": "esrt.pretrained",
    "save_weights": "esrt.convert",
    "forward_chop": "esrt.chop",
}

# Eager (numpy and PIL, no torch): importing the submodules esrt.imresize and esrt.upscale would otherwise
# rebind these names to the modules.
from esrt.imresize import imresize  # noqa: E402
from esrt.upscale import upscale  # noqa: E402

if TYPE_CHECKING:
    from esrt.chop import forward_chop
    from esrt.convert import save_weights
    from esrt.model import ESRT
    from esrt.pretrained import load_model

__all__ = ["ESRT", "__version__", "forward_chop", "imresize", "load_model", "save_weights", "upscale"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'esrt' has no attribute {name!r}")
