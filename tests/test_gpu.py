"""GPU trials without a GPU: Ray schedules a node's declared GPUs (`ray start --num-gpus=N`) as it
schedules real ones, so packing, placement and the ids a trial is given are checked on a simulated GPU
cluster; only CUDA is missing, and the trials say so. The device a trial picks from its ids is checked
here too; the tests that need CUDA itself run where there is one."""
import collections
import re

import ray  # noqa: F401 - first: Ray puts the psutil it bundles on sys.path
import pandas as pd
import pytest
import torch
import yaml
from ray import tune

from hero_bench.errors import ConfigError, HeroBenchError
from hero_bench.train import cuda_index, peak_memory_mb, resolve_device, run_trial
from hero_bench.trials import DEVICE, GPU_IDS, STATUS, TRIAL_ID
from processes import hero_bench_process, loopback_cluster, wait_for
from tiny import experiment

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
WARNING = re.compile(r"this trial was given GPU (\S+) \(CUDA_VISIBLE_DEVICES=(\S+)\) but torch finds no CUDA device")

# 8 trials of half a GPU and half a CPU on a node of 2 GPUs and 4 CPUs: the GPUs alone allow 4 at a time,
# 2 per GPU (the CPUs would allow 8). Each trains for about 2 s, so the second four, which reuse the
# first four's actors, overlap in training too.
GPUS, CPUS, SHARE, TRIALS = 2, 4, 0.5, 8
EXPERIMENT = experiment(
    name="gpus", data={"args": {"num_samples": 2048, "input_shape": [1, 8, 8], "num_classes": 3}},
    model={"name": "mlp", "args": {"hidden": [64]}}, train={"epochs": 8, "batch_size": 16},
    sweep={"space": {"train.lr": [0.01, 0.02, 0.03, 0.04]}, "seeds": [0, 1],
           "resources_per_trial": {"cpu": SHARE, "gpu": SHARE}},
)


def most_at_once(intervals):
    """The largest number of (start, end) intervals that overlap at one instant (an end and a
    start at the same instant do not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_most_at_once_counts_overlapping_intervals():
    assert most_at_once([(0, 2), (1, 3), (2, 4)]) == 2  # (0, 2) ends as (2, 4) starts
    assert most_at_once([(0, 10), (1, 2), (3, 4), (1.5, 3.5)]) == 3
    assert most_at_once([]) == 0


@pytest.mark.slow
def test_a_sweep_packs_two_trials_per_gpu_on_a_simulated_gpu_cluster(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    with loopback_cluster(nodes=1, cpus_per_node=CPUS, gpus_per_node=GPUS) as (address, env):
        args = ["sweep", "exp.yaml", "--address", address, "--storage", "ray"]
        # every trial's warning reaches the driver's log, not one line per kind
        with hero_bench_process(args, tmp_path, {**env, "RAY_DEDUP_LOGS": "0"}) as (proc, collect, _):
            assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=300)
    log = (tmp_path / "hero-bench-0.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert f"joined the Ray cluster at {address}: 1 nodes, {CPUS} CPUs, {GPUS} GPUs" in log

    trials = pd.read_csv(tmp_path / "results" / "gpus" / "trials.csv", dtype={TRIAL_ID: str})
    assert len(trials) == TRIALS and set(trials[STATUS]) == {"completed"}
    # each trial was given one GPU of the node, and trained on the CPU, as its row says
    assert set(trials[GPU_IDS]) == {"[0]", "[1]"}
    assert set(trials[DEVICE]) == {"cpu"}
    # ... and said so once, naming the GPU its process was shown (CUDA_VISIBLE_DEVICES): Ray's id
    warned = WARNING.findall(log)
    assert len(warned) == TRIALS, log[-3000:]
    assert all(gpu == visible for gpu, visible in warned)
    assert collections.Counter(f"[{gpu}]" for gpu, _ in warned) == collections.Counter(trials[GPU_IDS])

    # Ray Tune's own record of when each trial ran (running from its actor's start to its last result)
    ran = {t.trial_id: (t.run_metadata.start_time, t.run_metadata.last_result_time)
           for t in tune.ExperimentAnalysis(str(tmp_path / "ray" / "gpus")).trials}
    assert set(ran) == set(trials[TRIAL_ID])
    assert most_at_once(list(ran.values())) == GPUS / SHARE
    for gpu, group in trials.groupby(GPU_IDS):
        assert most_at_once([ran[t] for t in group[TRIAL_ID]]) <= 1 / SHARE, f"GPU {gpu} held more than it has"


def test_cuda_index_is_the_position_of_the_gpu_in_cuda_visible_devices():
    assert cuda_index("3", "2,3") == 1
    assert cuda_index("0", "0") == 0
    assert cuda_index("GPU-b", "GPU-a, GPU-b") == 1  # UUIDs, as nvidia-smi -L lists them
    assert cuda_index("2", None) == 2  # nothing hidden: the id is torch's index
    with pytest.raises(HeroBenchError, match="CUDA_VISIBLE_DEVICES='0,1' does not list"):
        cuda_index("5", "0,1")


@no_cuda
def test_a_trial_given_a_gpu_without_cuda_warns_and_trains_on_the_cpu(caplog, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    result = run_trial(experiment(train={"epochs": 1}), gpu_ids=["1"])
    assert result[STATUS] == "completed" and result[DEVICE] == "cpu"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and WARNING.search(warnings[0]).groups() == ("1", "1")


@no_cuda
def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused():
    assert resolve_device("auto") == resolve_device("auto", []) == resolve_device("cpu", ["0"]) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device is 'cuda' but no CUDA device"):
        resolve_device("cuda", ["0"])


def test_a_trial_given_no_gpu_never_takes_one():
    assert resolve_device("auto", []) == torch.device("cpu")  # Ray leaves the GPUs visible to it
    with pytest.raises(ConfigError, match="cuda"):
        resolve_device("cuda", [])


@cuda
def test_a_trial_trains_on_the_gpu_it_was_given_and_reports_that_gpus_memory(monkeypatch):
    last = torch.cuda.device_count() - 1  # not cuda:0, where a trial that ignored its ids would land
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # ids are then torch's own indices
    placed = {}

    def report(metrics, state):
        placed["weights"] = {t.device for t in state["model"].values()}

    torch.cuda.reset_peak_memory_stats(0)
    on_first = torch.cuda.memory_allocated(0)
    result = run_trial(experiment(train={"epochs": 1}), report=report, gpu_ids=[str(last)])
    assert result[DEVICE] == f"cuda:{last}" and placed["weights"] == {torch.device("cuda", last)}
    # the GPU allocator's peak, not the process's resident set (hundreds of MB for torch alone)
    assert 0 < result["peak_mem_mb"] <= torch.cuda.max_memory_allocated(last) / 2**20 < peak_memory_mb(torch.device("cpu"))
    if last:
        assert torch.cuda.max_memory_allocated(0) == on_first, "the trial allocated nothing on cuda:0"
