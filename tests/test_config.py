from hero_bench import config


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


def test_a_sweep_axis_can_be_set_from_the_command_line(tmp_path):
    cfg = config.load(write(tmp_path, "name: t\n"), ["sweep.space.optimizer.hessian_coef=[0, 10]"])
    assert cfg.sweep.space == {"optimizer.hessian_coef": [0, 10]}


def test_integers_are_accepted_where_floats_are_expected(tmp_path):
    assert config.load(write(tmp_path, "optimizer: {hessian_coef: 100}\n")).optimizer.hessian_coef == 100.0
