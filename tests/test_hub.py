"""hubconf.py: torch.hub loads ESRT from a checkout (source="local") with the shipped weights."""

from __future__ import annotations

import torch

from esrt.model import ESRT
from esrt.pretrained import load_model

from .conftest import REPO


def test_hub_load_gives_the_shipped_model() -> None:
    model = torch.hub.load(str(REPO), "esrt", scale=2, source="local")
    assert isinstance(model, ESRT)
    assert (model.scale, model.training) == (2, False)
    shipped = load_model(scale=2).state_dict()
    assert all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())


def test_hub_load_untrained() -> None:
    model = torch.hub.load(str(REPO), "esrt", scale=3, pretrained=False, source="local")
    assert isinstance(model, ESRT)
    assert (model.scale, model.training) == (3, True)
    assert not torch.equal(model.head.weight, load_model(scale=3).head.weight)
