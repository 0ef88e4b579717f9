"""The W&B report is built offline with the expected blocks and panels; report.md carries the same content."""
import shutil
from pathlib import Path

import pandas as pd
import pytest
import wandb_workspaces.reports.v2 as wr

from hero_bench.results.figures import CAPTIONS
from hero_bench.results import report

FIXTURE = Path(__file__).parent / "fixtures" / "trials_small.csv"
PNG = b"\x89PNG\r\n\x1a\n"  # report building only lists figure files, it does not read them


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "small"
    (folder / "figures").mkdir(parents=True)
    shutil.copy(FIXTURE, folder / "trials.csv")
    for name in ("heatmap_digits_mlp.png", "ptq_digits_mlp.png"):
        (folder / "figures" / name).write_bytes(PNG)
    return folder


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def blocks_of(built, kind):
    return [b for b in built.blocks if isinstance(b, kind)]


def test_report_has_leaderboard_panels_and_figures(results):
    built = report.build_report(results, entity="team", project="hero", title="HERO on digits")
    assert (built.entity, built.project, built.title) == ("team", "hero", "HERO on digits")
    assert [type(b) for b in built.blocks] == [wr.MarkdownBlock, wr.H1, wr.MarkdownBlock, wr.PanelGrid, wr.MarkdownBlock,
                                              wr.H1, wr.MarkdownBlock, wr.PanelGrid, wr.H1, wr.PanelGrid]
    board, sweep, figures = blocks_of(built, wr.PanelGrid)
    assert "`small-summary`" in built.blocks[2].text and "`small-results`" in built.blocks[2].text
    assert [r.filters for r in board.runsets] == [r.filters for r in figures.runsets] == ["ID = 'small-summary'"]
    assert [(type(p), p.table_name) for p in board.panels] == [(wr.WeavePanelSummaryTable, "leaderboard")]
    assert "# Paired comparisons" in built.blocks[4].text and "| test_acc | hero − sgd |" in built.blocks[4].text
    assert sweep.runsets[0].filters == "Group = 'small' and JobType != 'summary'"
    assert [type(p) for p in sweep.panels] == [wr.ParallelCoordinatesPlot, wr.LinePlot, wr.BarPlot, wr.BarPlot,
                                               wr.ScatterPlot]
    parallel, curves, ptq, hessian, compute = sweep.panels
    assert [c.metric for c in parallel.columns] == [
        wr.Config("optimizer.radius"), wr.Config("optimizer.hessian_coef"), wr.Config("data.label_noise"),
        wr.SummaryMetric("val_acc"), wr.SummaryMetric("test_acc")]
    assert parallel.columns[0]._to_model().accessor == "config:optimizer.value.radius"
    assert (curves.x, curves.y, curves.groupby) == ("epoch", ["val_acc"], wr.Config("config_hash"))
    assert curves._to_model().config.group_by == "config_hash.value"
    assert ptq.metrics == ["ptq_acc_8bit", "ptq_acc_4bit", "ptq_acc_2bit"] and ptq.groupby == "JobType"
    assert hessian.metrics == ["hessian_top_eig"]
    assert ptq._to_model().config.group_by == "jobType"  # panels serialize offline; the runset needs W&B
    assert (compute.x, compute.y) == ("grad_evals", "test_acc")
    assert [(type(p), p.media_keys, p.title) for p in figures.panels] == [
        (wr.MediaBrowser, ["figures/heatmap_digits_mlp"], CAPTIONS["heatmap"]),
        (wr.MediaBrowser, ["figures/ptq_digits_mlp"], CAPTIONS["ptq"])]


def test_report_panels_follow_the_metrics_present(results):
    trials = pd.read_csv(results / "trials.csv").drop(columns=["hessian_top_eig", "hessian_trace", "ptq_acc_8bit",
                                                               "ptq_acc_4bit", "ptq_acc_2bit"])
    built = report.build_report(trials, entity="team", project="hero")
    assert built.title == "hero-bench: small"
    panels = blocks_of(built, wr.PanelGrid)[1].panels
    assert [type(p) for p in panels] == [wr.ParallelCoordinatesPlot, wr.LinePlot, wr.ScatterPlot]
    assert [h.text for h in blocks_of(built, wr.H1)] == ["Leaderboard", "Sweep"]  # a DataFrame has no figures


def test_report_markdown_has_leaderboard_and_relative_figure_links(results):
    text = report.report_markdown(results)
    assert text.startswith("# hero-bench: small\n")
    assert "| family | status |" in text and "**92.00 ± 0.42**" in text and "diverged (epoch 4)" in text
    assert "](figures/heatmap_digits_mlp.png)" in text and "](figures/ptq_digits_mlp.png)" in text


def test_publish_without_credentials_writes_report_md_and_explains(results, offline, capsys):
    path = report.publish(results, "team", "hero")
    assert path == results / "report.md" and path.read_text() == report.report_markdown(results)
    out = capsys.readouterr().out
    assert "wandb login" in out and f"hero-bench report {results} --entity team --project hero" in out


def test_publish_offline_mode_does_not_save_even_with_a_key(results, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wr.Report, "save", lambda self, **kw: pytest.fail("saved in offline mode"))
    assert report.publish(results, "team", "hero") == results / "report.md"
    assert "WANDB_MODE=offline" in capsys.readouterr().out


def test_publish_with_credentials_saves_online_and_never_writes_the_key(results, monkeypatch, capsys):
    key = "secret" * 7
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "online")
    saved = []
    monkeypatch.setattr(wr.Report, "save", lambda self, **kw: saved.append(self))
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.ai/{self.entity}/{self.project}/r"))
    assert report.publish(results, "team", "hero") == "https://wandb.ai/team/hero/r"
    assert len(saved) == 1 and "https://wandb.ai/team/hero/r" in capsys.readouterr().out
    assert not any(key in p.read_text(errors="ignore") for p in results.rglob("*") if p.is_file())
