"""What a sweep prints to a pipe: a header, one plain line per finished trial and a summary, nothing of
Ray's own, no escape codes; --verbose gives Ray's output back. A real `hero-bench` process writes
into a file (a pipe, not a terminal); every process it starts is stopped by pid."""
import io
import re
from types import SimpleNamespace

import pytest
import yaml

from hero_bench.sweep import console

from processes import hero_bench_process, wait_for
from tiny import experiment

LRS = [0.01, 0.02, 0.03, 0.04]
SEEDS = [0, 1]



def sweep_output(tmp_path, *flags):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment(
        name="console", tracking={"wandb": "offline"}, sweep={"space": {"train.lr": LRS}, "seeds": SEEDS})))
    args = ["sweep", "exp.yaml", "--results", "results", "--storage", "ray", *flags]
    with hero_bench_process(args, tmp_path) as (proc, collect, tree):
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=600)
        assert proc.returncode == 0
    return (tmp_path / "hero-bench-0.log").read_text()


@pytest.mark.slow
def test_a_sweep_prints_a_header_a_line_per_trial_and_a_summary_to_a_pipe(tmp_path):
    out = sweep_output(tmp_path)
    lines = out.splitlines()
    total = len(LRS) * len(SEEDS)
    assert "\x1b" not in out  # no escape codes when stdout is not a terminal
    assert len(lines) <= total + 12, out  # the quickstart's 96 trials: about 110 lines
    assert lines[0] == f"hero-bench sweep console: {total} trials ({len(LRS)} configurations x {len(SEEDS)} seeds); " \
                       "2 at a time on 2 CPUs, 0 GPUs"
    progress = [line for line in lines if re.match(r"\[\s*\d+/8, ", line)]
    assert len(progress) == total and progress[-1].startswith("[8/8, ")
    assert all(re.search(r"\] completed +train\.lr=0\.0\d train\.seed=[01]  val \d+\.\d\d test \d+\.\d\d$", line)
               for line in progress), progress
    assert not [line for line in lines if "pid=" in line or "Trial status" in line or "Token authentication" in line]
    summary = lines[lines.index(next(line for line in lines if line.startswith("sweep finished in "))):]
    assert summary[0].endswith(f": {total} trials ({total} completed, 0 stopped, 0 diverged, 0 failed)")
    assert "best by validation accuracy (test accuracy never chooses):" in summary
    assert any(line.startswith("  synthetic / mlp / label noise 0: sgd (lr 0.0") for line in summary)
    assert any("leaderboard.md" in line and "comparisons.csv" in line for line in summary)
    assert any(line.startswith("W&B: offline runs in ") and "wandb sync " in line for line in summary)
    assert lines[-1].startswith("W&B: ")  # hero-bench's summary ends the output, nothing of Ray's after it


@pytest.mark.slow
def test_verbose_gives_ray_its_own_output_back(tmp_path):
    out = sweep_output(tmp_path, "--verbose", "--set", "sweep.seeds=[0]")
    assert "Trial status" in out or "Configuration for experiment" in out
    assert not re.search(r"^\[\d+/\d+, ", out, flags=re.M)  # no hero-bench progress lines then


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_progress_is_one_bar_of_done_running_and_failed():
    terminal = Terminal()
    progress = console.Progress(total=4, done=1, metric="val_acc", stream=terminal)  # one finished before a resume
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"train.lr": 0.1, "train.seed": i}, error_file=None,
                              last_result={"status": "completed", "val_acc": 90.0, "test_acc": 89.0}) for i in range(3)]
    for trial in trials:
        progress.on_trial_start(0, trials, trial)
    progress.on_trial_complete(1, trials, trials[0])
    progress.on_trial_error(2, trials, trials[1])
    assert (progress.bar.n, progress.done, progress.failed, len(progress.running)) == (3, 3, 1, 1)
    assert "running 1, failed 1" in terminal.getvalue() and "3/4" in terminal.getvalue()
    assert "completed" not in terminal.getvalue()  # no per-trial lines on a terminal: the bar says it ...
    failed = [line for line in terminal.getvalue().splitlines() if "] failed " in line]  # ... but a failure is a line above it
    assert len(failed) == 1 and "train.lr=0.1 train.seed=1" in failed[0] and failed[0].endswith(": error; traceback in errors.log")
    progress.close()


@pytest.mark.slow
def test_a_trial_worker_stopped_by_ray_prints_no_ignored_exit_but_other_ignored_errors_still_show():
    """Ray's SIGTERM handler raises SystemExit wherever the worker is; inside a weakref callback Python
    prints it as an ignored exception (the traceback a sweep's console once showed). A worker made
    quiet drops exactly that one; a real error in such a callback is still printed."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import weakref
        from hero_bench.sweep import console
        console.quiet_trial(verbose=QUIET)
        class Thing: pass
        def stop(_): raise SystemExit(1)        # what Ray's sigterm handler raises
        def broken(_): raise ValueError("a real bug")
        a, b = Thing(), Thing()
        refs = [weakref.ref(a, stop), weakref.ref(b, broken)]
        del a, b
        print("still running")
    """)
    for verbose, exit_shown in ((False, False), (True, True)):
        done = subprocess.run([sys.executable, "-c", script.replace("QUIET", str(verbose))],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout == "still running\n", done.stderr
        assert ("SystemExit" in done.stderr) == exit_shown, done.stderr
        assert "ValueError: a real bug" in done.stderr
