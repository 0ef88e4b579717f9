import pytest

from hero_bench import config
from hero_bench.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_every_section(tmp_path):
    cfg = config.load(write(tmp_path, "name: t\n"))
    assert cfg.data.name == "digits" and cfg.data.val_fraction == 0.1
    assert cfg.optimizer.adaptive is True and cfg.optimizer.hvp == "auto"
    assert cfg.evaluate.hessian.samples == 512


def test_overrides_are_parsed_as_yaml_scalars(tmp_path):
    cfg = config.load(write(tmp_path, "name: t\n"), ["optimizer.radius=0.25", "train.epochs=3", "optimizer.adaptive=false",
                                                     "evaluate.ptq_bits=[8, 4]", "model.args.hidden=[32]"])
    assert cfg.optimizer.radius == 0.25 and cfg.train.epochs == 3 and cfg.optimizer.adaptive is False
    assert cfg.evaluate.ptq_bits == [8, 4] and cfg.model.args == {"hidden": [32]}


def test_override_values_are_never_evaluated(tmp_path):
    with pytest.raises(ConfigError, match="name must be"):
        config.load(write(tmp_path, "name: t\n"), ["name=__import__('os').getcwd()"])


def test_a_sweep_axis_can_be_set_from_the_command_line(tmp_path):
    cfg = config.load(write(tmp_path, "name: t\n"), ["sweep.space.optimizer.hessian_coef=[0, 10]"])
    assert cfg.sweep.space == {"optimizer.hessian_coef": [0, 10]}


def test_integers_are_accepted_where_floats_are_expected(tmp_path):
    assert config.load(write(tmp_path, "optimizer: {hessian_coef: 100}\n")).optimizer.hessian_coef == 100.0


@pytest.mark.parametrize("text, overrides, message", [
    ("data: {label_noise: 1.0}", [], r"data.label_noise must be in \[0, 1\), got 1.0"),
    ("data: {val_fraction: 0}", [], r"data.val_fraction must be in \(0, 1\)"),
    ("train: {epochs: 0}", [], r"train.epochs must be in \[1, inf\)"),
    ("train: {epochs: two}", [], r"train.epochs must be int, got 'two'"),
    ("train: {epoch: 2}", [], r"unknown key 'train.epoch'; allowed in this section: epochs"),
    ("data: {name: imagenet}", [], r"data.name: unknown dataset 'imagenet'; known: .*digits"),
    ("model: {name: resnet19}", [], r"model.name: unknown model 'resnet19'; known: .*resnet20"),
    ("optimizer: {name: adam}", [], r"optimizer.name: unknown method 'adam'; known: .*hero"),
    ("optimizer: {hvp: approx}", [], r"optimizer.hvp must be one of auto, fd, exact"),
    ("evaluate: {ptq_bits: [8, 1]}", [], r"evaluate.ptq_bits must be in \[2, 16\], got 1"),
    ("name: ../escape", [], r"name must be letters"),
    ("name: /abs", [], r"name must be letters"),
    ("name: t", ["train.nope=1"], r"unknown key 'train.nope'"),
    ("name: t", ["radius"], r"--set expects key=value"),
    ("name: t", ["train.epochs.x=1"], r"'train.epochs' is a value, not a section"),
    ("- a\n- b", [], r"YAML mapping"),
])
def test_bad_input_names_the_field_and_what_is_allowed(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text), overrides)


def test_malformed_yaml_reports_the_position(tmp_path):
    with pytest.raises(ConfigError, match=r"malformed YAML .* line \d+, column \d+"):
        config.load(write(tmp_path, "name: t\ndata: {name: digits\n  bad: [\n"))


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
