import pytest

from hero_bench import catalog, config, yamlfile
from hero_bench.sweep import search
from hero_bench.sweep import space as sweep_space
from hero_bench.train import run_trial
from tiny import experiment


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
    assert config.load(write(tmp_path, "name: t\noptimizer: {hessian_coef: 100}\n")).optimizer.hessian_coef == 100.0


def test_exponent_notation_is_a_number_as_in_yaml_1_2(tmp_path):
    cfg = config.load(write(tmp_path, "name: t\ntrain: {lr: 1e-3, weight_decay: 5E-4}\n"), ["optimizer.hessian_coef=1e2"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.optimizer.hessian_coef) == (0.001, 0.0005, 100.0)


def test_the_name_may_come_from_the_command_line(tmp_path):
    assert config.load(write(tmp_path, "train: {epochs: 1}\n"), ["name=from_flag"]).name == "from_flag"


def test_aliases_are_read_as_independent_copies(tmp_path):
    path = write(tmp_path, "name: t\n"
                           "sweep:\n  space:\n"
                           "    - &sam {optimizer.name: [sam], train.lr: &lrs [0.01, 0.1]}\n"
                           "    - {<<: *sam, optimizer.name: [hero]}\n"  # a merge key may override what it merges
                           "    - {optimizer.name: [sgd], train.lr: *lrs}\n")
    grids = yamlfile.read_yaml(path)["sweep"]["space"]
    assert grids[1] == {"optimizer.name": ["hero"], "train.lr": [0.01, 0.1]} and grids[2]["train.lr"] == [0.01, 0.1]
    assert grids[0]["train.lr"] is not grids[2]["train.lr"]  # editing one grid never edits another
    points = [cell.point for cell in sweep_space.cells(config.load(path).sweep)]
    assert len(points) == 6 and {"optimizer.name": "hero", "train.lr": 0.1} in points


def test_a_file_of_aliases_below_the_cap_loads(tmp_path):
    # 10 ** 4 values once expanded: big, but an honest file; the cap is 10 ** 5
    path = write(tmp_path, "name: t\nmodel:\n  args:\n    a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                 + "".join(f"    {b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abc", "bcd")))
    assert len(yamlfile.read_yaml(path)["model"]["args"]["d"]) == 10


def test_bounds_sit_where_a_typo_is_likely_and_real_values_pass():
    cfg = config.from_dict({"name": "t" * config.MAX_NAME, "train": {"epochs": 100_000, "seed": config.MAX_SEED},
                            "sweep": {"seeds": [0, config.MAX_SEED]}})
    assert cfg.train.epochs == 100_000 and cfg.train.seed == 2**32 - 1


def test_every_trial_config_of_an_optuna_search_is_checked_for_what_its_factories_read():
    base = config.from_dict({"name": "t", "sweep": {"search": "optuna", "num_samples": 3, "space": {
        "model.name": {"dist": "choice", "values": ["mlp", "lenet5"]},
        "train.lr": {"dist": "loguniform", "low": 0.01, "high": 0.3}}}})
    checked = sweep_space.TrialConfigs(base)
    checked.check(search.prepare(base).checked)
    # every model choice, the learning rate once (at the low end of its range)
    assert sorted((c.model.name, c.train.lr) for c in checked._configs.values()) == [("lenet5", 0.01), ("mlp", 0.01)]


def test_a_sweep_runs_by_exactly_the_metrics_every_epoch_reports():
    """sweep.metric's choices (the catalog's per-epoch metrics) are what run_trial puts in every report:
    Ray Tune needs the sweep metric in each one."""
    reports = []
    result = run_trial(config.from_dict(experiment(train={"epochs": 2})), report=lambda metrics, state: reports.append(set(metrics)))
    every = set.intersection(*reports)
    # besides the metrics: bookkeeping, and where the trial trained (text)
    assert every - {"status", "label_noise_realized", "resumed_from_epoch", "device"} == set(catalog.per_epoch())
    assert set(reports[-1]) == set(result) - {"epochs_done"}  # the last report adds the end-of-training metrics
    assert "test_acc_at_best_val" in result and "test_acc_at_best_val" not in every
    with pytest.raises(config.ConfigError, match="sweep.metric must be one of the metrics every epoch reports"):
        sweep_space.search_space(config.from_dict(experiment(sweep={"metric": "test_acc_at_best_val"})))
