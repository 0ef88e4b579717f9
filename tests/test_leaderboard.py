"""Leaderboard from a hand-made trials table whose winners, means and gains are known by hand."""
import io
import math

import pandas as pd
import pytest

from hero_bench import trials as table
from hero_bench.errors import HeroBenchError
from hero_bench.results import leaderboard as lb
from hero_bench.results import outputs

# digits / mlp, seeds 0 and 1. Label noise 0:
#   sgd  0.05/0   val 80,82  test 79,81   family sgd
#   hero 0/1      val 83,83  test 70,72   family sgd (radius 0); better val than plain sgd -> chosen sgd
#   sam  0/0      val 60,60  test 99,99   family sgd (radius 0); best test, worst val -> never chosen
#   hero 0.05/0   val 84,86  test 85,85   family sam; chosen sam
#   sam  0.1/0    val 83,85  test 90,90   family sam; better test, worse val -> not chosen
#   hero 0.05/1   val 88,90  test 86,88   family hero; chosen hero (test 87 ± sqrt 2)
#   hero 0.1/1    seed 0 val 95, seed 1 diverged at epoch 2 -> listed as diverged, never chosen
#   hero 0.2/1    seed 0 val 99, seed 1 stopped -> incomplete, neither chosen nor listed
#   gradnorm 0.05/0    val 70,70  test 70,70   family sgd (hessian_coef 0)
#   gradnorm 0.05/0.1  val 75,77  test 74,76   family gradnorm
# Label noise 0.4: sgd test 60,62 (best test of its group), hero test 55,57.
TRIALS = """\
trial_id,status,diverged_epoch,optimizer.name,optimizer.radius,optimizer.hessian_coef,data.label_noise,train.seed,val_acc,test_acc,gen_gap,ptq_acc_4bit,grad_evals
a0,completed,,sgd,0.05,0,0,0,80,79,20,70,100
a1,completed,,sgd,0.05,0,0,1,82,81,18,72,100
b0,completed,,hero,0,1,0,0,83,70,29,60,100
b1,completed,,hero,0,1,0,1,83,72,27,62,100
c0,completed,,sam,0,0,0,0,60,99,0,90,100
c1,completed,,sam,0,0,0,1,60,99,0,90,100
d0,completed,,hero,0.05,0,0,0,84,85,14,80,200
d1,completed,,hero,0.05,0,0,1,86,85,14,82,200
e0,completed,,sam,0.1,0,0,0,83,90,9,85,200
e1,completed,,sam,0.1,0,0,1,85,90,9,85,200
f0,completed,,hero,0.05,1,0,0,88,86,13,84,400
f1,completed,,hero,0.05,1,0,1,90,88,11,86,400
g0,completed,,hero,0.1,1,0,0,95,95,4,90,400
g1,diverged,2,hero,0.1,1,0,1,,,,,160
h0,completed,,hero,0.2,1,0,0,99,99,0,95,400
h1,stopped,,hero,0.2,1,0,1,50,50,49,40,100
i0,completed,,gradnorm,0.05,0,0,0,70,70,29,60,300
i1,completed,,gradnorm,0.05,0,0,1,70,70,29,60,300
j0,completed,,gradnorm,0.05,0.1,0,0,75,74,25,65,300
j1,completed,,gradnorm,0.05,0.1,0,1,77,76,23,67,300
k0,completed,,sgd,0.05,0,0.4,0,60,60,30,50,100
k1,completed,,sgd,0.05,0,0.4,1,62,62,28,52,100
l0,completed,,hero,0.05,1,0.4,0,58,55,35,50,400
l1,completed,,hero,0.05,1,0.4,1,60,57,33,52,400
"""
CONSTANT = {"name": "hand", "data.name": "digits", "model.name": "mlp", "optimizer.adaptive": True,
            "optimizer.hvp": "exact", "optimizer.hessian_every": 1, "train.lr": 0.1, "train.epochs": 3}


def trials():
    df = pd.read_csv(io.StringIO(TRIALS))
    for key, value in CONSTANT.items():
        df[key] = value
    return df


@pytest.fixture
def results(tmp_path):
    trials().to_csv(tmp_path / "trials.csv", index=False)
    return tmp_path


def row(board, family, noise=0.0, status="completed"):
    rows = board[(board["family"] == family) & (board["data.label_noise"] == noise) & (board["status"] == status)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


@pytest.mark.parametrize("name, radius, coef, family", [
    ("sgd", 0.05, 0.0, "sgd"),
    ("sam", 0.0, 0.0, "sgd"), ("sam", 0.1, 0.0, "sam"),
    ("hero", 0.0, 1.0, "sgd"), ("hero", 0.0, 0.0, "sgd"), ("hero", 0.05, 0.0, "sam"), ("hero", 0.05, 1.0, "hero"),
    ("gradnorm", 0.05, 0.0, "sgd"), ("gradnorm", 0.05, 0.1, "gradnorm"),
])
def test_method_family_at_grid_edges(name, radius, coef, family):
    assert table.family({"optimizer.name": name, "optimizer.radius": radius,
                             "optimizer.hessian_coef": coef}) == family


def test_a_compute_matched_configuration_is_a_family_of_its_own():
    assert table.family({"optimizer.name": "sgd", "optimizer.radius": 0.0, "optimizer.hessian_coef": 0.0,
                         "train.compute_factor": 3}) == "sgd_3x"
    assert table.family({"optimizer.name": "hero", "optimizer.radius": 0.0, "optimizer.hessian_coef": 1.0,
                         "train.compute_factor": 2}) == "sgd_2x"
    assert table.family({"optimizer.name": "sam", "optimizer.radius": 0.1, "optimizer.hessian_coef": 0.0}) == "sam"


def test_method_family_of_a_table_is_one_label_per_row():
    families = table.family(trials())
    assert families.tolist()[:6] == ["sgd", "sgd", "sgd", "sgd", "sgd", "sgd"]
    assert families.value_counts().to_dict() == {"sgd": 10, "hero": 8, "sam": 4, "gradnorm": 2}


def test_chosen_configuration_is_best_by_validation_not_by_test():
    board = lb.leaderboard(trials())
    sgd, sam = row(board, "sgd"), row(board, "sam")
    # sgd: hero at radius 0 (val 83) beats plain sgd (val 81) and sam at radius 0 (val 60, test 99)
    assert (sgd["optimizer.name"], sgd["optimizer.radius"], sgd["optimizer.hessian_coef"]) == ("hero", 0, 1)
    assert sgd["test_acc_mean"] == 71
    # sam: hero 0.05/0 (val 85, test 85) beats sam 0.1 (val 84, test 90)
    assert (sam["optimizer.name"], sam["optimizer.radius"]) == ("hero", 0.05)
    assert sam["test_acc_mean"] == 85


def test_means_stds_and_interval_match_hand_computation():
    hero = row(lb.leaderboard(trials()), "hero")
    assert hero["val_acc_mean"] == 89 and hero["test_acc_mean"] == 87
    assert hero["test_acc_std"] == pytest.approx(math.sqrt(2))  # sample std of 86, 88
    # t_{0.975, 1} = 12.7062; half-width = t · sqrt(2) / sqrt(2)
    assert hero["test_acc_ci95"] == pytest.approx(12.7062, abs=1e-4)
    assert hero["ptq_acc_4bit_mean"] == 85 and hero["grad_evals_mean"] == 400 and hero["n_seeds"] == 2


def test_per_config_groups_seeds_and_counts_only_completed_ones():
    configs = lb.per_config(trials())
    assert len(configs) == 12  # 24 trials, 2 seeds each
    diverged = configs[(configs["optimizer.radius"] == 0.1) & (configs["optimizer.hessian_coef"] == 1)].iloc[0]
    assert diverged["status"] == "diverged" and diverged["n_trials"] == 2 and diverged["n_completed"] == 1
    assert diverged["val_acc_mean"] == 95 and diverged["val_acc_count"] == 1
    assert math.isnan(diverged["val_acc_std"]) and math.isnan(diverged["val_acc_ci95"])  # one seed
    stopped = configs[configs["optimizer.radius"] == 0.2].iloc[0]
    assert stopped["status"] == "incomplete" and stopped["val_acc_mean"] == 99


def test_per_config_shows_each_configurations_config_hash_which_is_neither_a_metric_nor_a_key(tmp_path):
    df = trials()
    keys = [tuple(k) for k in df[["optimizer.name", "optimizer.radius", "optimizer.hessian_coef", "data.label_noise"]].values]
    # one hash per configuration, as the sweep writes it; all digits, so a plain read makes them numbers
    df["config_hash"] = [f"{list(dict.fromkeys(keys)).index(k) + 1:012d}" for k in keys]
    df.to_csv(tmp_path / "trials.csv", index=False)
    for read in (pd.read_csv(tmp_path / "trials.csv"), table.read(tmp_path / "trials.csv")):
        configs = lb.per_config(read)
        assert len(configs) == 12 and configs["config_id"].tolist() == list(range(12))
        assert not [c for c in configs.columns if c.startswith("config_hash_")]  # not averaged as a metric
        for row in configs.to_dict("records"):
            seeds = df[(df["optimizer.name"] == row["optimizer.name"]) & (df["optimizer.radius"] == row["optimizer.radius"])
                       & (df["optimizer.hessian_coef"] == row["optimizer.hessian_coef"])
                       & (df["data.label_noise"] == row["data.label_noise"])]
            assert {str(h).zfill(12) for h in seeds["config_hash"]} == {str(row["config_hash"]).zfill(12)}


def test_diverged_configuration_is_listed_and_never_chosen():
    board = lb.leaderboard(trials())
    diverged = row(board, "hero", status="diverged")
    assert (diverged["optimizer.radius"], diverged["diverged_epoch"]) == (0.1, 2)
    assert math.isnan(diverged["test_acc_mean"])
    assert row(board, "hero")["optimizer.radius"] == 0.05  # not the diverged one with val 95 on seed 0


def test_incomplete_configuration_is_neither_chosen_nor_listed():
    board = lb.leaderboard(trials())
    assert 0.2 not in board["optimizer.radius"].tolist()


def test_gain_of_hero_over_sgd_and_sam_and_best_test_mark():
    board = lb.leaderboard(trials())
    hero = row(board, "hero")
    assert hero["gain_vs_sgd"] == pytest.approx(87 - 71)
    assert hero["gain_vs_sam"] == pytest.approx(87 - 85)
    assert board.loc[board["best_test_acc"], ["family", "data.label_noise"]].values.tolist() == [
        ["hero", 0.0], ["sgd", 0.4]]
    noisy_hero = row(board, "hero", noise=0.4)
    assert noisy_hero["gain_vs_sgd"] == pytest.approx(56 - 61) and math.isnan(noisy_hero["gain_vs_sam"])


def test_groups_list_families_in_fixed_order():
    board = lb.leaderboard(trials())
    clean = board[board["data.label_noise"] == 0]
    assert list(zip(clean["family"], clean["status"])) == [
        ("sgd", "completed"), ("sam", "completed"), ("hero", "completed"), ("gradnorm", "completed"),
        ("hero", "diverged")]


def test_failed_trial_makes_its_configuration_incomplete_and_its_error_text_is_no_metric():
    df = trials()
    df["error"] = None
    df.loc[df["trial_id"] == "f1", ["status", "error"]] = ["failed", "RuntimeError: out of memory"]
    assert "error" not in table.metric_columns(df)
    board = lb.leaderboard(df)
    # hero 0.05/1 lost a seed, 0.1/1 diverged, 0.2/1 was stopped: no hero result at label noise 0
    assert board.loc[(board["family"] == "hero") & (board["data.label_noise"] == 0), "status"].tolist() == [
        "diverged"]
    assert not any(c.startswith("error") for c in lb.per_config(df).columns)


def test_load_trials_names_the_missing_path(tmp_path):
    with pytest.raises(table.TrialsNotFoundError, match=str(tmp_path / "trials.csv")):
        table.read(tmp_path)


def test_load_trials_names_a_missing_column(tmp_path):
    trials().drop(columns=["val_acc"]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(HeroBenchError, match="val_acc"):
        table.read(tmp_path / "t.csv")


def test_write_creates_tables_without_absent_metrics(results):
    written, _ = outputs.write(results)
    names = {p.name for p in written}
    assert {"per_config.csv", "leaderboard.csv", "leaderboard.md", "leaderboard.html"} <= names
    assert not [p for p in results.iterdir() if p.name.endswith(".tmp")]  # atomic writes left no temp files
    board = pd.read_csv(results / "leaderboard.csv")
    assert "ptq_acc_4bit_mean" in board and not any(c.startswith("hessian") for c in board.columns)
    md = (results / "leaderboard.md").read_text()
    assert "**87.00 ± 1.41**" in md and "diverged (epoch 2)" in md and "hessian_top_eig" not in md
    assert "HERO test accuracy: +16.00 points over SGD, +2.00 points over SAM." in md
    html = (results / "leaderboard.html").read_text()
    assert "<b>87.00 ± 1.41</b>" in html
