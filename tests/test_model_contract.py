"""The model contract, run over every registered model (``list_models()``) and backbone.

What the engine, CLI, bench and trainer may call is declared on :class:`VOSModel`; these tests
check that each registered model keeps it: options are explicit, registration is unique, a clip
trains (every parameter that should learn gets a gradient), the recurrent state does not grow,
objects can be added later, ``predict`` leaves its state alone and checkpoints round-trip.
"""

from __future__ import annotations

import json

import pytest
import torch

from vostool.errors import VostoolError
from vostool.models import build_model, list_models, load_model, read_checkpoint, register_model, save_checkpoint
from vostool.models.base import VOSModel
from vostool.models.registry import get_spec, model_options

NAMES = [s.name for s in list_models()]


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_key_is_rejected(name: str) -> None:
    with pytest.raises(VostoolError, match=f"model '{name}' has no option 'no_such_option'"):
        build_model(name, no_such_option=1)


@pytest.mark.parametrize("name", NAMES)
def test_saved_config_keys_are_constructor_options(name: str) -> None:
    model = build_model(name)
    assert set(model.config) - {"backbone"} <= set(model_options(get_spec(name)))


def test_misspelt_key_in_a_checkpoint_is_one_clear_error(tmp_path, one_thread) -> None:
    torch.manual_seed(0)
    path = save_checkpoint(build_model("crvos", channels=[16, 8, 8]), tmp_path / "c.safetensors")
    state, meta = read_checkpoint(path)
    config = json.loads(meta["config"])
    config["chanels"] = config.pop("channels")
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(VostoolError, match="model 'crvos' has no option 'chanels'; its options: channels"):
        load_model("crvos", path)


def test_registering_a_name_twice_is_an_error() -> None:
    with pytest.raises(VostoolError, match="model name 'crvos' is registered twice"):
        @register_model("crvos", title="t", paper="p", published="-")
        class Again(VOSModel):
            pass
    assert get_spec("crvos").cls.__name__ == "CRVOS"
