import pytest

from hero_bench.errors import ConfigError
from hero_bench.registry import Registry


def make():
    registry = Registry("model")
    for name in ("resnet56", "resnet110", "resnet20", "mlp"):
        registry.register(name)(lambda name=name, **kw: (name, kw))
    return registry


def test_names_are_sorted_naturally_and_filtered_by_wildcard():
    registry = make()
    assert registry.names() == ["mlp", "resnet20", "resnet56", "resnet110"]
    assert registry.names("resnet*") == ["resnet20", "resnet56", "resnet110"]


def test_create_passes_keyword_arguments_through():
    assert make().create("mlp", width=3) == ("mlp", {"width": 3})


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet19'; known: mlp, resnet20, resnet56, resnet110"):
        make().get("resnet19")


def test_registering_a_name_twice_is_refused():
    registry = make()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("mlp")(lambda: None)
