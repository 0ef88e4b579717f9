"""Figures of a trials table: one PNG per (figure kind, dataset, model) under results/<name>/figures/.

Every figure that compares families uses the configuration the leaderboard chose for it (best
mean validation accuracy); error bars are 95% t-intervals over seeds, cut at the metric's range
(an accuracy's at 0 and 100). Panels are per label-noise setting (rate and kind). A figure whose axes have no data
(no Hessian column, a single label-noise level, ...) is skipped with a one-line reason, never drawn
empty.
"""
import io
import math
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hero_bench.atomic import write_atomic  # noqa: E402
from hero_bench import catalog  # noqa: E402
from hero_bench.results.leaderboard import CONFIG_ID, configuration_ids, select_best  # noqa: E402
from hero_bench.trials import (  # noqa: E402
    COEF, DATA, FAMILY, METHOD, MODEL, NOISE, NOISE_KIND, RADIUS, STATUS, family_order,
)

CAPTIONS = {
    "heatmap": "HERO mean validation and test accuracy over the (radius ρ, hessian_coef γ) grid",
    "ptq": "Test accuracy after post-training weight quantization, per bit width",
    "label_noise": "Test accuracy and memorization of the noisy labels vs the training label-noise rate",
    "hessian": "Top Hessian eigenvalue of the training loss",
    "compute": "Test accuracy vs gradient evaluations, every completed configuration",
    "density": "Hessian eigenvalue density of the training loss (stochastic Lanczos quadrature)",
}
COLORS = {"sgd": "tab:blue", "sgd_2x": "tab:cyan", "sgd_3x": "tab:purple", "sam": "tab:orange", "hero": "tab:red",
          "gradnorm": "tab:green"}
OTHER_COLORS = ["tab:brown", "tab:pink", "tab:olive", "tab:gray"]
TITLE_CHARACTERS_PER_INCH = 11  # at the default 12-point suptitle, so a wrapped title fits its figure


def _color(family, families):
    others = [f for f in families if f not in COLORS]
    return COLORS.get(family) or OTHER_COLORS[others.index(family) % len(OTHER_COLORS)]


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-")


def _settings(frame):
    """The (label-noise rate, kind) pairs of a frame, in order; the clean setting once."""
    pairs = sorted({(p, k if p > 0 else "") for p, k in zip(frame[NOISE], frame[NOISE_KIND])})
    return pairs


def _at(frame, setting):
    noise, kind = setting
    return frame[(frame[NOISE] == noise) & ((frame[NOISE_KIND] == kind) | (noise == 0))]


def _setting_label(setting):
    noise, kind = setting
    return "clean labels" if noise == 0 else f"label noise {noise:g} ({kind})"


def _figure(rows, columns, title, width=4.8, height=3.8, **kwargs):
    """A figure of rows x columns panels whose title is wrapped to fit its width."""
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False,
                             layout="constrained", **kwargs)
    fig.suptitle(textwrap.fill(title, width=max(30, int(TITLE_CHARACTERS_PER_INCH * width * columns))))
    return fig, axes


def _clipped(mean, ci, low=0.0, high=100.0):
    """Error bars (below, above) of mean ± ci, cut at the metric's range [low, high]: an accuracy's
    95% interval over two seeds can reach past 0 and 100, the accuracy cannot."""
    mean, ci = np.asarray(mean, dtype=float), np.nan_to_num(np.asarray(ci, dtype=float))
    return np.clip(np.stack([np.minimum(ci, mean - low), np.minimum(ci, high - mean)]), 0, None)


def _legend(ax):
    """The families' legend beside the last panel, where it hides no point."""
    ax.legend(title=FAMILY, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))


# ------------------------------------------------------------------------------------- one figure
# Each takes (configs, chosen, title) of one (dataset, model) and returns a Figure or the reason
# it has nothing to draw.

def _heatmap_grids(hero, radii, coefs):
    """(val grid, test grid, diverged mask) over radius x hessian_coef for one label-noise setting."""
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
    """Mean val/test accuracy of the hero rows over (ρ, γ); one column per label-noise setting, with
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
    settings = _settings(hero)
    fig, axes = _figure(2, len(settings), f"{title}: HERO accuracy (%) over radius ρ and hessian_coef γ "
                        "(grey: no completed run)", width=1.0 * len(coefs) + 2.5, height=0.8 * len(radii) + 1.5)
    for j, setting in enumerate(settings):
        val, test, diverged = _heatmap_grids(_at(hero, setting), radii, coefs)
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
            ax.set_title(f"{split}, {_setting_label(setting)}", fontsize=9)
        fig.colorbar(image, ax=axes[:, j].tolist(), label="accuracy (%)", shrink=0.8)
    return fig


def _quantization_rows(chosen):
    """(variant, its ptq_acc Entries from most to fewest bits) for each quantization variant (per
    tensor, per channel) with at least two bit widths that have data."""
    metrics = [c.removesuffix("_mean") for c in chosen.columns if c.endswith("_mean") and chosen[c].notna().any()]
    found = catalog.entries(metrics, kind="ptq_acc")
    variants = dict.fromkeys(entry.metric.variant for entry in found)
    rows = [(variant, [e for e in found if e.metric.variant == variant]) for variant in variants]
    return [(variant, entries) for variant, entries in rows if len(entries) >= 2]


def ptq(configs, chosen, title):
    """Test accuracy vs weight bit width, one line per family, per tensor (top row) and per channel
    (bottom row, when the trials have it); dashed: float weights; bars: 95% intervals over seeds."""
    rows = _quantization_rows(chosen)
    if not rows:
        return "fewer than two ptq_acc_{b}bit columns with data"
    settings = _settings(chosen)
    fig, axes = _figure(len(rows), len(settings), f"{title}: test accuracy after post-training quantization "
                        "(dashed: float weights; bars: 95% intervals)", sharey="row")
    families = family_order(chosen[FAMILY])
    for (variant, entries), axes_row in zip(rows, axes):
        bits = [entry.value for entry in entries]
        for ax, setting in zip(axes_row, settings):
            at = _at(chosen, setting)
            for family in families:
                row = at[at[FAMILY] == family]
                if row.empty:
                    continue
                row, color = row.iloc[0], _color(family, families)
                mean = [row[f"{entry.column}_mean"] for entry in entries]
                ci = [row[f"{entry.column}_ci95"] for entry in entries]
                ax.errorbar(bits, mean, yerr=_clipped(mean, ci), marker="o", capsize=3, color=color, label=family)
                ax.axhline(row["test_acc_mean"], color=color, linestyle="--", linewidth=1)
            ax.set_xticks(bits)
            ax.invert_xaxis()  # fewer bits to the right: accuracy falls as precision drops
            ax.set_xlabel("weight bit width")
            ax.set_title(f"{_setting_label(setting)}, {variant or 'per tensor'}", fontsize=9)
            ax.grid(alpha=0.3)
        axes_row[0].set_ylabel("test accuracy (%)")
    _legend(axes[0][-1])
    return fig


def label_noise(configs, chosen, title):
    """Against the label-noise rate, per family's chosen configuration: test accuracy at the last epoch
    (solid) and at the epoch of best validation accuracy (dashed), and the accuracy on the noisy
    labels it trained on (memorization); one line per noise kind, the clean setting shared."""
    noises = np.sort(chosen[NOISE].unique())
    if len(noises) < 2:
        return "a single label-noise level"
    panels = [("test_acc", "test accuracy (%)")]
    if "train_acc_noisy_mean" in chosen and chosen["train_acc_noisy_mean"].notna().any():
        panels.append(("train_acc_noisy", "accuracy on the training labels (%)"))
    fig, axes = _figure(1, len(panels), f"{title}: test accuracy (solid: last epoch, dashed: best validation epoch)"
                        " and memorization of the noisy labels vs label noise; bars: 95% intervals",
                        width=6, height=4.2)
    families = family_order(chosen[FAMILY])
    kinds = sorted(set(chosen.loc[chosen[NOISE] > 0, NOISE_KIND]))
    markers = dict(zip(kinds, "osD^v"))
    for ax, (metric, label) in zip(axes[0], panels):
        for family in families:
            for kind in kinds:
                rows = chosen[(chosen[FAMILY] == family) & ((chosen[NOISE_KIND] == kind) | (chosen[NOISE] == 0))]
                rows = rows.sort_values(NOISE).drop_duplicates(NOISE)
                name = family if len(kinds) == 1 else f"{family} ({kind})"
                ax.errorbar(rows[NOISE], rows[f"{metric}_mean"], yerr=_clipped(rows[f"{metric}_mean"], rows[f"{metric}_ci95"]),
                            marker=markers[kind], capsize=3, color=_color(family, families), label=name)
                if metric == "test_acc" and "test_acc_at_best_val_mean" in rows:
                    ax.plot(rows[NOISE], rows["test_acc_at_best_val_mean"], linestyle="--", marker=markers[kind],
                            color=_color(family, families), alpha=0.6)
        ax.set_xticks(noises, [f"{p:g}" for p in noises])
        ax.set_xlabel("training label-noise rate p")
        ax.set_ylabel(label)
        ax.ticklabel_format(axis="y", useOffset=False)  # 99.98 stays 99.98, not "+1e2" and -0.02
        ax.grid(alpha=0.3)
    _legend(axes[0][-1])
    return fig


def hessian(configs, chosen, title):
    """Bars: top Hessian eigenvalue of each family's chosen configuration, per label-noise setting."""
    if "hessian_top_eig_mean" not in chosen:
        return "no hessian_top_eig column in trials.csv"
    rows = chosen[chosen["hessian_top_eig_mean"].notna()]
    if rows.empty:
        return "hessian_top_eig has no values"
    settings = _settings(rows)
    families = family_order(rows[FAMILY])
    fig, axes = _figure(1, 1, f"{title}: top Hessian eigenvalue (lower = flatter; bars: 95% intervals)",
                        width=max(5.0, 1.2 * len(settings) * len(families)), height=4.2)
    ax = axes[0][0]
    width = 0.8 / len(families)
    for k, family in enumerate(families):
        values = [_at(rows[rows[FAMILY] == family], s) for s in settings]
        x = np.arange(len(settings)) + (k - (len(families) - 1) / 2) * width
        ax.bar(x, [v["hessian_top_eig_mean"].iloc[0] if len(v) else np.nan for v in values], width,
               yerr=[v["hessian_top_eig_ci95"].fillna(0).iloc[0] if len(v) else 0 for v in values], capsize=3,
               color=_color(family, families), label=family)
    ax.set_xticks(np.arange(len(settings)), [_setting_label(s) for s in settings])
    ax.set_ylabel("top eigenvalue λ_max")
    _legend(ax)
    ax.grid(axis="y", alpha=0.3)
    return fig


COMPUTE_AXES = (("grad_evals", "gradient evaluations per trial"), ("time_total_s", "training time per trial (s)"),
                ("time_per_epoch_s", "time per epoch (s)"))


def compute(configs, chosen, title):
    """Every completed configuration's test accuracy (95% interval over seeds) against its cost;
    ringed: the configurations chosen by validation. Families at the same cost (SAM and sgd_2x, HERO
    and sgd_3x) sit side by side; each panel's y axis spans its chosen configurations' intervals, the number of
    configurations below it is in the panel's title, and the axis's span in points in its label."""
    done = configs[configs[STATUS] == "completed"]
    axis = next(((key, label) for key, label in COMPUTE_AXES
                 if f"{key}_mean" in done and done[f"{key}_mean"].notna().any()), None)
    if axis is None:
        return "no grad_evals or time column with data"
    key, label = axis
    done = done[done[f"{key}_mean"].notna() & done["test_acc_mean"].notna()]
    if len(done) < 2:
        return "fewer than two completed configurations with cost data"
    settings = _settings(done)
    fig, axes = _figure(1, len(settings), f"{title}: test accuracy vs compute (bars: 95% intervals over seeds; "
                        "ringed: chosen by validation)")
    families = family_order(done[FAMILY])
    shift = {f: 1 + 0.02 * (k - (len(families) - 1) / 2) for k, f in enumerate(families)}
    for ax, setting in zip(axes[0], settings):
        at, best = _at(done, setting), _at(chosen, setting)
        for family in families:
            rows = at[at[FAMILY] == family]
            ax.errorbar(rows[f"{key}_mean"] * shift[family], rows["test_acc_mean"], yerr=_clipped(rows["test_acc_mean"], rows["test_acc_ci95"]),
                        fmt="o", capsize=2, color=_color(family, families), alpha=0.7, label=family)
        ax.scatter(best[f"{key}_mean"] * best[FAMILY].map(shift), best["test_acc_mean"], s=160, facecolors="none",
                   edgecolors="black")
        ci = best["test_acc_ci95"].fillna(0)
        low = max(0.0, (best["test_acc_mean"] - ci).min() - 1)
        high = min(100.0, (best["test_acc_mean"] + ci).max() + 1)
        ax.set_ylim(low, high)  # each panel its own range: settings can differ by tens of points
        ax.set_ylabel(f"test accuracy (%); the axis spans {high - low:.1f} points")
        below = int((at["test_acc_mean"] < low).sum())
        x = done[f"{key}_mean"]
        if x.min() > 0 and x.max() / x.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_title(_setting_label(setting) + (f"; {below} configurations below the axis" if below else ""), fontsize=9)
        ax.grid(alpha=0.3)
    _legend(axes[0][-1])
    return fig


FIGURES = {"heatmap": heatmap, "ptq": ptq, "label_noise": label_noise, "hessian": hessian, "compute": compute}

# Gaussian broadening of the density: variance 1e-5 on the spectrum mapped to [-1, 1] (Ghorbani et al. 2019).
DENSITY_SIGMA = 1e-5**0.5 / 2  # times the width λ_max − λ_min of the plotted spectrum
DENSITY_FLOOR = 1e-7  # lowest density drawn, relative to the panel's highest


def density_curve(nodes, weights, grid, sigma):
    """φ_σ(t) = Σ_k τ_k N(t; θ_k, σ²) on `grid`: the quadrature's point masses broadened by Gaussians
    of standard deviation σ, so it integrates to Σ τ_k = 1 over the real line."""
    nodes, weights, grid = (np.asarray(a, dtype=float) for a in (nodes, weights, grid))
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z**2) @ weights) / (sigma * math.sqrt(2 * math.pi))


def _seed_densities(trials, row):
    """The hessian_density values of a chosen configuration's completed trials (its seeds); `trials`
    carries each trial's config_id (leaderboard.configuration_ids), as `row` does."""
    done = trials[(trials[CONFIG_ID] == row[CONFIG_ID]) & (trials[STATUS] == "completed")]
    return [catalog.density_from_json(text) for text in done[catalog.HESSIAN_DENSITY.name].dropna()]


def density(trials, chosen, title):
    """Hessian eigenvalue density, log scale, of each family's chosen configuration, one panel per
    label-noise setting: the seeds' quadrature nodes pooled (each seed weighing 1/n), broadened by
    Gaussians of standard deviation DENSITY_SIGMA times the panel's spectral width."""
    if catalog.HESSIAN_DENSITY.name not in trials or trials[catalog.HESSIAN_DENSITY.name].isna().all():
        return f"no {catalog.HESSIAN_DENSITY.name} in trials.csv (evaluate.hessian.density is off)"
    pooled = {}
    for _, row in chosen.iterrows():
        seeds = _seed_densities(trials, row)
        if seeds:
            nodes = np.concatenate([n for n, _ in seeds])
            setting = _settings(chosen.loc[[row.name]])[0]
            pooled[setting, row[FAMILY]] = nodes, np.concatenate([w for _, w in seeds]) / len(seeds)
    if not pooled:
        return f"no chosen configuration has a {catalog.HESSIAN_DENSITY.name}"
    settings = sorted({setting for setting, _ in pooled})
    fig, axes = _figure(1, len(settings), f"{title}: Hessian eigenvalue density (Gaussian broadening)", sharey=True)
    families = family_order(chosen[FAMILY])
    peak = 0.0
    for ax, setting in zip(axes[0], settings):
        panel = {family: value for (at, family), value in pooled.items() if at == setting}
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
        ax.set_title(_setting_label(setting))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylim(DENSITY_FLOOR * peak, 2 * peak)  # the panels share their y axis
    axes[0][0].set_ylabel("density")
    _legend(axes[0][-1])
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
    # numbered as per_config numbered `configs` (the whole table, before any filtering)
    numbered = None if trials is None else trials.assign(**{CONFIG_ID: configuration_ids(trials)})
    for (data, model), group in configs.groupby([DATA, MODEL], sort=True):
        chosen = chosen_all[(chosen_all[DATA] == data) & (chosen_all[MODEL] == model)]
        drawings = [(kind, draw, group) for kind, draw in FIGURES.items()]
        if trials is not None:
            pair = numbered[(numbered[DATA] == data) & (numbered[MODEL] == model)]
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
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(write_atomic(out_dir / name, buffer.getvalue()))
    return written, skipped
