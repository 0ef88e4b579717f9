"""Figures of a trials table: one PNG per (figure kind, dataset, model) under results/<name>/figures/.

Every figure that compares families uses the configuration the leaderboard chose for it (best
mean validation accuracy); error bars are the std over seeds. A figure whose axes have no data
(no Hessian column, a single label-noise level, ...) is skipped with a one-line reason, never drawn
empty.
"""
import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hero_bench.atomic import write_atomic  # noqa: E402
from hero_bench.hessian import density_curve  # noqa: E402
from hero_bench.metrics import DENSITY_KEY, density_from_json  # noqa: E402
from hero_bench.results.leaderboard import select_best  # noqa: E402
from hero_bench.trials import (  # noqa: E402
    COEF, DATA, FAMILY, METHOD, MODEL, NOISE, RADIUS, SEED, STATUS, config_columns, family_order,
)

CAPTIONS = {
    "heatmap": "HERO mean validation and test accuracy over the (radius ρ, hessian_coef γ) grid",
    "ptq": "Test accuracy after post-training weight quantization, per bit width",
    "label_noise": "Test accuracy vs training label-noise rate",
    "hessian": "Top Hessian eigenvalue of the training loss",
    "compute": "Test accuracy vs compute, every completed configuration",
    "density": "Hessian eigenvalue density of the training loss (stochastic Lanczos quadrature)",
}
COLORS = {"sgd": "tab:blue", "sam": "tab:orange", "hero": "tab:red", "gradnorm": "tab:green"}
OTHER_COLORS = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _color(family, families):
    others = [f for f in families if f not in COLORS]
    return COLORS.get(family) or OTHER_COLORS[others.index(family) % len(OTHER_COLORS)]


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-")


def _noise_label(p):
    return f"label noise {p:g}"


def _panels(n, title, width=4.8, height=3.8):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=True)
    fig.suptitle(title)
    return fig, list(axes[0])


# ------------------------------------------------------------------------------------- one figure
# Each takes (configs, chosen, title) of one (dataset, model) and returns a Figure or the reason
# it has nothing to draw.

def _heatmap_grids(hero, radii, coefs):
    """(val grid, test grid, diverged mask) over radius x hessian_coef for one label-noise level."""
    val, test = np.full((2, len(radii), len(coefs)), np.nan)
    diverged = np.zeros((len(radii), len(coefs)), dtype=bool)
    for (r, g), cell in hero.groupby([RADIUS, COEF]):
        i, k = np.searchsorted(radii, r), np.searchsorted(coefs, g)
        done = cell[(cell[STATUS] == "completed") & cell["val_acc_mean"].notna()]
        if done.empty:
            diverged[i, k] = (cell[STATUS] == "diverged").any()
        else:
            best = done.loc[done["val_acc_mean"].idxmax()]
            val[i, k], test[i, k] = best["val_acc_mean"], best["test_acc_mean"]
    return val, test, diverged


def heatmap(configs, chosen, title):
    """Mean val/test accuracy of the hero rows over (ρ, γ); one column per label-noise level, with
    one color scale per column. Where several configurations share a cell (other swept keys), the
    one with the best val accuracy fills it."""
    hero = configs[configs[METHOD] == "hero"]
    if hero.empty:
        return "no hero configurations"
    radii = np.sort(hero[RADIUS].unique())
    coefs = np.sort(hero[COEF].unique())
    if len(radii) * len(coefs) < 2:
        return "hero ran at a single (radius, hessian_coef) point"
    if not hero[STATUS].isin(["completed", "diverged"]).any():
        return "no hero configuration completed or diverged"
    noises = np.sort(hero[NOISE].unique())
    size = (len(noises) * (1.0 * len(coefs) + 2.5), 2 * (0.8 * len(radii) + 1.2) + 0.6)
    fig, axes = plt.subplots(2, len(noises), figsize=size, squeeze=False, constrained_layout=True)
    fig.suptitle(f"{title}: HERO accuracy (%) over radius ρ and hessian_coef γ; grey: no completed run")
    for j, p in enumerate(noises):
        val, test, diverged = _heatmap_grids(hero[hero[NOISE] == p], radii, coefs)
        finite = np.concatenate([val[np.isfinite(val)], test[np.isfinite(test)]])
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 100.0)
        for ax, grid, split in ((axes[0][j], val, "validation"), (axes[1][j], test, "test")):
            image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap="viridis", vmin=lo, vmax=hi,
                              aspect="auto")
            ax.set_facecolor("0.85")
            for (i, k), v in np.ndenumerate(grid):
                bright = not np.isnan(v) and (v - lo) > 0.6 * (hi - lo)  # yellow end of viridis: black text
                text = "diverged" if diverged[i, k] else ("" if np.isnan(v) else f"{v:.1f}")
                ax.text(k, i, text, ha="center", va="center", fontsize=8,
                        color="black" if bright or np.isnan(v) else "white")
            ax.set_xticks(range(len(coefs)), [f"{g:g}" for g in coefs])
            ax.set_yticks(range(len(radii)), [f"{r:g}" for r in radii])
            ax.set_xlabel("hessian_coef γ")
            ax.set_ylabel("radius ρ")
            ax.set_title(f"{split}, {_noise_label(p)}")
        fig.colorbar(image, ax=axes[:, j].tolist(), label="accuracy (%)", shrink=0.8)
    return fig


def ptq(configs, chosen, title):
    """Test accuracy vs weight bit width (per-tensor PTQ), one line per family; dashed: float weights."""
    bits = sorted((int(m.group(1)) for c in chosen.columns
                   if (m := re.fullmatch(r"ptq_acc_(\d+)bit_mean", c)) and chosen[c].notna().any()),
                  reverse=True)
    if len(bits) < 2:
        return "fewer than two ptq_acc_{b}bit columns with data"
    noises = np.sort(chosen[NOISE].unique())
    fig, axes = _panels(len(noises), f"{title}: test accuracy after post-training quantization "
                                     "(dashed: float weights)")
    families = family_order(chosen[FAMILY])
    for ax, p in zip(axes, noises):
        at_noise = chosen[chosen[NOISE] == p]
        for family in families:
            row = at_noise[at_noise[FAMILY] == family]
            if row.empty:
                continue
            row = row.iloc[0]
            color = _color(family, families)
            mean = [row[f"ptq_acc_{b}bit_mean"] for b in bits]
            std = [row[f"ptq_acc_{b}bit_std"] for b in bits]
            ax.errorbar(bits, mean, yerr=np.nan_to_num(std), marker="o", capsize=3, color=color, label=family)
            ax.axhline(row["test_acc_mean"], color=color, linestyle="--", linewidth=1)
        ax.set_xticks(bits)
        ax.invert_xaxis()  # fewer bits to the right: accuracy falls as precision drops
        ax.set_xlabel("weight bit width")
        ax.set_title(_noise_label(p))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(title=FAMILY)
    fig.tight_layout()
    return fig


def label_noise(configs, chosen, title):
    """Test accuracy of each family's chosen configuration vs the label-noise rate."""
    noises = np.sort(chosen[NOISE].unique())
    if len(noises) < 2:
        return "a single label-noise level"
    fig, axes = _panels(1, f"{title}: test accuracy vs label noise", width=6, height=4.2)
    ax = axes[0]
    families = family_order(chosen[FAMILY])
    for family in families:
        rows = chosen[chosen[FAMILY] == family].sort_values(NOISE)
        ax.errorbar(rows[NOISE], rows["test_acc_mean"], yerr=rows["test_acc_std"].fillna(0),
                    marker="o", capsize=3, color=_color(family, families), label=family)
    ax.set_xticks(noises, [f"{p:g}" for p in noises])
    ax.set_xlabel("training label-noise rate p")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(title=FAMILY)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def hessian(configs, chosen, title):
    """Bars: top Hessian eigenvalue of each family's chosen configuration, grouped by label noise."""
    if "hessian_top_eig_mean" not in chosen:
        return "no hessian_top_eig column in trials.csv"
    rows = chosen[chosen["hessian_top_eig_mean"].notna()]
    if rows.empty:
        return "hessian_top_eig has no values"
    noises = np.sort(rows[NOISE].unique())
    families = family_order(rows[FAMILY])
    fig, axes = _panels(1, f"{title}: top Hessian eigenvalue (lower = flatter)",
                        width=max(5.0, 1.2 * len(noises) * len(families)), height=4.2)
    ax = axes[0]
    width = 0.8 / len(families)
    for k, family in enumerate(families):
        bars = rows[rows[FAMILY] == family].set_index(NOISE).reindex(noises)
        x = np.arange(len(noises)) + (k - (len(families) - 1) / 2) * width
        ax.bar(x, bars["hessian_top_eig_mean"], width, yerr=bars["hessian_top_eig_std"].fillna(0), capsize=3,
               color=_color(family, families), label=family)
    ax.set_xticks(np.arange(len(noises)), [_noise_label(p) for p in noises])
    ax.set_ylabel("top eigenvalue λ_max")
    ax.legend(title=FAMILY)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


COMPUTE_AXES = (("grad_evals", "gradient evaluations per trial"), ("time_total_s", "training time per trial (s)"),
                ("time_per_epoch_s", "time per epoch (s)"))


def compute(configs, chosen, title):
    """Every completed configuration's test accuracy against its cost; circled: chosen by validation."""
    done = configs[configs[STATUS] == "completed"]
    axis = next(((key, label) for key, label in COMPUTE_AXES
                 if f"{key}_mean" in done and done[f"{key}_mean"].notna().any()), None)
    if axis is None:
        return "no grad_evals or time column with data"
    key, label = axis
    done = done[done[f"{key}_mean"].notna() & done["test_acc_mean"].notna()]
    if len(done) < 2:
        return "fewer than two completed configurations with cost data"
    noises = np.sort(done[NOISE].unique())
    fig, axes = _panels(len(noises), f"{title}: test accuracy vs compute (circled: chosen by validation)")
    families = family_order(done[FAMILY])
    for ax, p in zip(axes, noises):
        for family in families:
            rows = done[(done[NOISE] == p) & (done[FAMILY] == family)]
            ax.scatter(rows[f"{key}_mean"], rows["test_acc_mean"], color=_color(family, families), alpha=0.7,
                       label=family)
        best = chosen[chosen[NOISE] == p]
        ax.scatter(best[f"{key}_mean"], best["test_acc_mean"], s=160, facecolors="none", edgecolors="black")
        x = done[f"{key}_mean"]
        if x.min() > 0 and x.max() / x.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_title(_noise_label(p))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(title=FAMILY)
    fig.tight_layout()
    return fig


FIGURES = {"heatmap": heatmap, "ptq": ptq, "label_noise": label_noise, "hessian": hessian, "compute": compute}

# Gaussian broadening of the density: variance 1e-5 on the spectrum mapped to [-1, 1] (Ghorbani et al. 2019).
DENSITY_SIGMA = 1e-5**0.5 / 2  # times the width λ_max − λ_min of the plotted spectrum
DENSITY_FLOOR = 1e-7  # lowest density drawn, relative to the panel's highest


def _seed_densities(trials, row):
    """The hessian_density values of a chosen configuration's completed trials (its seeds)."""
    keys = [c for c in config_columns(trials) if c != SEED]
    same = np.ones(len(trials), dtype=bool)
    for key in keys:
        same &= (trials[key].isna() if pd.isna(row[key]) else trials[key] == row[key]).to_numpy()  # NaN: unset
    done = trials[same & (trials[STATUS] == "completed").to_numpy()]
    return [density_from_json(text) for text in done[DENSITY_KEY].dropna()]


def density(trials, chosen, title):
    """Hessian eigenvalue density, log scale, of each family's chosen configuration, one panel per
    label-noise level: the seeds' quadrature nodes pooled (each seed weighing 1/n), broadened by
    Gaussians of standard deviation DENSITY_SIGMA times the panel's spectral width."""
    if DENSITY_KEY not in trials or trials[DENSITY_KEY].isna().all():
        return f"no {DENSITY_KEY} in trials.csv (evaluate.hessian.density is off)"
    pooled = {}
    for _, row in chosen.iterrows():
        seeds = _seed_densities(trials, row)
        if seeds:
            nodes = np.concatenate([n for n, _ in seeds])
            pooled[row[NOISE], row[FAMILY]] = nodes, np.concatenate([w for _, w in seeds]) / len(seeds)
    if not pooled:
        return f"no chosen configuration has a {DENSITY_KEY}"
    noises = sorted({noise for noise, _ in pooled})
    fig, axes = _panels(len(noises), f"{title}: Hessian eigenvalue density (Gaussian broadening)")
    families = family_order(chosen[FAMILY])
    peak = 0.0
    for ax, p in zip(axes, noises):
        panel = {family: value for (noise, family), value in pooled.items() if noise == p}
        low = min(nodes.min() for nodes, _ in panel.values())
        high = max(nodes.max() for nodes, _ in panel.values())
        width = max(high - low, 1e-12)
        grid = np.linspace(low - 0.05 * width, high + 0.05 * width, 4000)
        curves = {family: density_curve(nodes, weights, grid, DENSITY_SIGMA * width)
                  for family, (nodes, weights) in panel.items()}
        for family in (f for f in families if f in curves):
            ax.semilogy(grid, curves[family], color=_color(family, families), label=family)
        peak = max(peak, *(curve.max() for curve in curves.values()))
        ax.set_xlabel("eigenvalue λ")
        ax.set_title(_noise_label(p))
        ax.grid(alpha=0.3)
    axes[0].set_ylim(DENSITY_FLOOR * peak, 2 * peak)  # the panels share their y axis
    axes[0].set_ylabel("density")
    axes[0].legend(title=FAMILY)
    fig.tight_layout()
    return fig


# Figures drawn from the trials themselves rather than per-configuration statistics: (trials, chosen, title).
TRIAL_FIGURES = {"density": density}


def figure_name(kind, data, model):
    """The file name of a figure kind for one (dataset, model): `{kind}_{dataset}_{model}.png`."""
    return f"{kind}_{_slug(data)}_{_slug(model)}.png"


def figures_of(df, folder):
    """(kind, path) of every figure drawn in `folder` for the (dataset, model) pairs of a trials table,
    per pair in the order of FIGURES."""
    pairs = sorted(set(zip(df[DATA], df[MODEL])))
    paths = [(kind, Path(folder) / figure_name(kind, data, model)) for data, model in pairs
             for kind in [*FIGURES, *TRIAL_FIGURES]]
    return [(kind, path) for kind, path in paths if path.is_file()]


def write_figures(configs, out_dir, trials=None):
    """Draw every figure kind for every (dataset, model) of per-configuration statistics (per_config)
    into out_dir; the TRIAL_FIGURES too when the `trials` table they were computed from is given.
    Returns (written PNG paths, skipped notes `file: reason`)."""
    out_dir = Path(out_dir)
    written, skipped = [], []
    if configs.empty:
        return written, ["all figures: the trials table has no rows"]
    chosen_all = select_best(configs)
    for (data, model), group in configs.groupby([DATA, MODEL], sort=True):
        chosen = chosen_all[(chosen_all[DATA] == data) & (chosen_all[MODEL] == model)]
        drawings = [(kind, draw, group) for kind, draw in FIGURES.items()]
        if trials is not None:
            pair = trials[(trials[DATA] == data) & (trials[MODEL] == model)]
            drawings += [(kind, draw, pair) for kind, draw in TRIAL_FIGURES.items()]
        for kind, draw, source in drawings:
            name = figure_name(kind, data, model)
            if chosen.empty and kind != "heatmap":  # only the heatmap can show diverged cells alone
                fig = "no configuration completed every seed"
            else:
                fig = draw(source, chosen, f"{data} / {model}")
            if isinstance(fig, str):
                skipped.append(f"{name}: {fig}")
                continue
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110)
            plt.close(fig)
            written.append(write_atomic(out_dir / name, buffer.getvalue()))
    return written, skipped
