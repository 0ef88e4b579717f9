"""Write every output of a results folder from its trials.csv: per_config.csv, leaderboard.{csv,md,html}
and figures/*.png."""
from hero_bench import trials
from hero_bench.atomic import write_atomic
from hero_bench.results import figures, leaderboard


def write(results_dir):
    """Write the outputs into the folder of `results_dir` (a results folder or its trials.csv) and return
    their paths; figures that lack data are skipped with a printed one-line note."""
    folder = trials.path_of(results_dir).parent
    df = trials.read(results_dir)
    configs = leaderboard.per_config(df)
    board = leaderboard.leaderboard(df, configs)
    title = f"Leaderboard: {leaderboard.experiment_name(df, folder.name)}"
    written = [write_atomic(folder / "per_config.csv", configs.to_csv(index=False)),
               write_atomic(folder / "leaderboard.csv", board.to_csv(index=False)),
               write_atomic(folder / "leaderboard.md", leaderboard.to_markdown(board, title)),
               write_atomic(folder / "leaderboard.html", leaderboard.to_html(board, title))]
    drawn, skipped = figures.write_figures(configs, folder / "figures", df)
    for note in skipped:
        print(f"figure skipped: {note}")
    return written + drawn
