import pytest
import torch

from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector
from token_reduction.selection import (
    PoolingSelection,
    RandomSelection,
    SelectionMethod,
    available_methods,
    get_method,
    register_method,
    required_extras,
)
from token_reduction.selection import registry


def test_known_names_build_protocol_implementations():
    assert available_methods() == ["learned", "random", "pooling", "norm", "attention", "tome", "visionzip", "contrast", "grid", "diversity"]
    for name in available_methods()[1:]:
        method = get_method(name)
        assert isinstance(method, SelectionMethod) and method.name == name
    assert get_method(" Random ", seed=3).seed == 3
    assert get_method("pooling", mode="subsample").mode == "subsample"
    assert required_extras("visionzip") == ("attention",) and required_extras("tome") == ()


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="known methods: learned, random, pooling"):
        get_method("sparsevlm")


def test_fastv_is_explained_not_faked():
    with pytest.raises(ValueError, match="inside the language model"):
        get_method("fastv")


def test_bad_arguments_say_what_is_accepted():
    with pytest.raises(ValueError, match="accepts: mode, max_aspect_change"):
        get_method("pooling", seed=1)


def test_learned_needs_a_selector_and_loads_an_exported_one(tmp_path):
    with pytest.raises(ValueError, match="--selector"):
        get_method("learned")
    folder = TokenSelector(8, TrunkConfig(width=8, depth=1, heads=2)).save_pretrained(tmp_path / "sel")
    method = get_method("learned", selector=folder)
    assert isinstance(method, TokenSelector) and method.dim == 8 and not method.training
    with pytest.raises(FileNotFoundError):
        get_method("learned", selector=tmp_path / "missing")


def test_register_method(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    register_method("every_other", lambda: PoolingSelection(mode="subsample"))
    assert get_method("every_other").select(torch.zeros(1, 4, 2), 2).counts.tolist() == [2]
    with pytest.raises(ValueError, match="already registered"):
        register_method("random", RandomSelection)
