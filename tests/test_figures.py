"""Figures are real, non-blank PNGs; a figure without data for its axes is skipped and named."""
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd

from hero_bench.results import figures
from hero_bench.results.leaderboard import configuration_ids, per_config, select_best

FIXTURE = Path(__file__).parent / "fixtures" / "trials_small.csv"  # digits/mlp, 6 configs, 2 noise levels, 2 seeds
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_readable_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, path
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05, f"{path} looks blank"  # a white canvas has std 0


def test_every_figure_is_a_nonblank_png(tmp_path):
    written, skipped = figures.write_figures(per_config(pd.read_csv(FIXTURE)), tmp_path / "figures")
    assert skipped == []
    assert sorted(p.name for p in written) == [f"{kind}_digits_mlp.png" for kind in
                                               ("compute", "heatmap", "hessian", "label_noise", "ptq")]
    for path in written:
        assert_readable_png(path)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(p.name for p in written)


def test_figures_without_data_are_skipped_and_named(tmp_path):
    trials = pd.read_csv(FIXTURE)
    trials = trials[trials["data.label_noise"] == 0].drop(columns=["hessian_top_eig", "hessian_trace"])
    written, skipped = figures.write_figures(per_config(trials), tmp_path)
    assert skipped == ["label_noise_digits_mlp.png: a single label-noise level",
                       "hessian_digits_mlp.png: no hessian_top_eig column in trials.csv"]
    assert sorted(p.name for p in written) == ["compute_digits_mlp.png", "heatmap_digits_mlp.png",
                                               "ptq_digits_mlp.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_grid_and_bit_width_figures_need_two_points():
    trials = pd.read_csv(FIXTURE)
    trials = trials[trials["optimizer.name"] != "hero"].drop(columns=["ptq_acc_4bit", "ptq_acc_2bit"])
    configs = per_config(trials)
    chosen = select_best(configs)
    assert figures.heatmap(configs, chosen, "t") == "no hero configurations"
    assert figures.ptq(configs, chosen, "t") == "fewer than two ptq_acc_{b}bit columns with data"


def test_each_compute_panel_shows_its_own_chosen_configurations():
    """Noise settings can sit tens of points apart; every panel's y axis holds its chosen means."""
    configs = per_config(pd.read_csv(FIXTURE))
    chosen = select_best(configs)
    fig = figures.compute(configs, chosen, "digits / mlp")
    panels = fig.axes[:len(figures._settings(configs))]
    assert len(panels) == 2
    for ax, setting in zip(panels, figures._settings(configs)):
        low, high = ax.get_ylim()
        means = figures._at(chosen, setting)["test_acc_mean"]
        assert len(means) and ((low <= means) & (means <= high)).all(), (setting, low, high, list(means))
    assert panels[0].get_ylim() != panels[1].get_ylim()
    figures.plt.close(fig)


def test_accuracy_intervals_stop_at_0_and_100_percent():
    """Two seeds 96 points apart: their 95% t-interval is about ±610 points around 50, and the bars
    and axes of every accuracy figure still stay within [0, 100]."""
    trials = pd.read_csv(FIXTURE)
    spread = [column for column in trials if column.startswith(("ptq_acc_", "test_acc", "train_acc_noisy"))]
    first = trials["train.seed"] == trials["train.seed"].min()
    for column in spread:
        trials[column] = np.where(first, 2.0, 98.0)
    configs = per_config(trials)
    chosen = select_best(configs)
    assert (chosen["ptq_acc_2bit_ci95"] > 500).all()
    for kind in ("ptq", "label_noise", "compute"):
        fig = figures.FIGURES[kind](configs, chosen, "digits / mlp")
        bars = [segment[:, 1] for ax in fig.axes for container in ax.containers
                for lines in container[2] for segment in lines.get_segments()]
        assert bars and min(map(min, bars)) == 0.0 and max(map(max, bars)) == 100.0, kind
        for ax in fig.axes[:len(figures._settings(configs))]:
            assert -10 < ax.get_ylim()[0] and ax.get_ylim()[1] < 110, (kind, ax.get_ylim())
        figures.plt.close(fig)


def test_every_title_and_label_fits_inside_its_figure():
    configs = per_config(pd.read_csv(FIXTURE))
    chosen = select_best(configs)
    for kind, draw in figures.FIGURES.items():
        fig = draw(configs, chosen, "digits / mlp")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        texts = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
        for text in texts:
            if text is None or not text.get_text():
                continue
            extent = text.get_window_extent(renderer)
            assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, (kind, text.get_text())
            assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, (kind, text.get_text())
        figures.plt.close(fig)


def with_densities(trials):
    """The trials with a hessian_density per row: two nodes that name the row (its number and 100 + it)."""
    return trials.assign(hessian_density=[json.dumps({"nodes": [i, 100 + i], "weights": [0.25, 0.75]})
                                          for i in range(len(trials))])


def test_density_figure_pools_exactly_the_seeds_of_each_chosen_configuration(tmp_path):
    trials = with_densities(pd.read_csv(FIXTURE))
    chosen = select_best(per_config(trials))
    for _, row in chosen.iterrows():
        same = ((trials["optimizer.name"] == row["optimizer.name"]) & (trials["optimizer.radius"] == row["optimizer.radius"])
                & (trials["optimizer.hessian_coef"] == row["optimizer.hessian_coef"])
                & (trials["data.label_noise"] == row["data.label_noise"]))
        expected = sorted(np.flatnonzero(same.to_numpy()))
        seeds = figures._seed_densities(trials.assign(config_id=configuration_ids(trials)), row)
        assert sorted(int(nodes[0]) for nodes, _ in seeds) == expected and len(expected) == 2
        assert all(np.array_equal(weights, [0.25, 0.75]) for _, weights in seeds)
    written, skipped = figures.write_figures(per_config(trials), tmp_path, trials)
    assert skipped == []
    assert tmp_path / "density_digits_mlp.png" in written
    assert_readable_png(tmp_path / "density_digits_mlp.png")
    assert ("density", tmp_path / "density_digits_mlp.png") in figures.figures_of(trials, tmp_path)


def test_density_figure_is_skipped_without_densities_and_not_drawn_without_the_trials(tmp_path):
    trials = pd.read_csv(FIXTURE)
    written, skipped = figures.write_figures(per_config(trials), tmp_path, trials)
    assert skipped == ["density_digits_mlp.png: no hessian_density in trials.csv (evaluate.hessian.density is off)"]
    written, skipped = figures.write_figures(per_config(with_densities(trials)), tmp_path / "none")
    assert "density_digits_mlp.png" not in [p.name for p in written] and skipped == []
