import pytest

from hero_bench import registry as registry_module
from hero_bench.errors import ConfigError
from hero_bench.registry import Registry, call_problem


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


def test_each_name_records_its_origin_and_a_second_registration_names_both():
    registry = make()
    with registry_module.origin("plugin lab (/lab/lab.py)") as made:
        registry.register("tiny")(lambda **kw: None)
    assert made == [("model", "tiny")]
    assert registry.origin("mlp") == "built-in" and registry.origin("tiny") == "plugin lab (/lab/lab.py)"
    with registry_module.origin("plugin other (/x/other.py)"), pytest.raises(
            ConfigError, match=r"^model 'tiny' is already registered \(plugin lab \(/lab/lab.py\)\); "
                               r"plugin other \(/x/other.py\) registers it again$"):
        registry.register("tiny")(lambda **kw: None)


def test_a_factory_that_cannot_be_called_as_hero_bench_calls_it_is_refused_at_registration():
    registry = Registry("model", check=lambda f: call_problem(f, keywords=("input_shape", "num_classes")))
    registry.register("fine")(lambda *, input_shape, num_classes, width=3: None)

    def tiny(x, width):
        return None

    with registry_module.origin("plugin lab (/lab/lab.py)"), pytest.raises(
            ConfigError, match=r"^plugin lab \(/lab/lab.py\): model 'tiny': hero-bench calls it as "
                               r"tiny\(input_shape=..., num_classes=...\), which its signature refuses: "):
        registry.register("tiny")(tiny)
    assert registry.names() == ["fine"]
    assert call_problem(lambda model, data, evaluate, seed: None, args=("model", "data", "evaluate", "seed")) is None
    assert "missing a required argument: 'seed'" in call_problem(lambda model, data, evaluate, seed: None, args=("model", "data", "evaluate"))
