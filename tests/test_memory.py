"""A model too big for its device is refused before it is built: the estimate counts what the real
model has, allocates nothing and draws no random number, and a real `hero-bench train` of a
34-gigabyte model ends in seconds with one line, having never grown past a few hundred megabytes."""
import subprocess
import sys
import time

import psutil
import pytest
import torch
import yaml

from hero_bench import memory, models
from tiny import experiment

SHAPES = {"mlp": (1, 8, 8), "mnist1d_cnn": (1, 40)}  # every other model takes images
LIMIT = 2 * 2**30  # torch itself takes a few hundred MB


@pytest.mark.parametrize("name", models.MODELS.names())
def test_the_estimate_counts_the_parameters_the_model_has_and_draws_no_random_number(name):
    shape = SHAPES.get(name, (3, 32, 32))
    state = torch.get_rng_state()
    parameters, need = memory.estimate(name, shape, 10, {}, 16)
    assert torch.equal(torch.get_rng_state(), state), "the estimate changed the seeded initialization"
    assert parameters == sum(p.numel() for p in models.create(name, shape, 10).parameters())
    # the parameters' copies, and the activations of a batch: more for a bigger batch
    assert need > memory.BYTES * memory.PARAMETER_COPIES * parameters
    assert memory.estimate(name, shape, 10, {}, 32)[1] > need


@pytest.mark.slow
def test_a_model_too_big_for_the_machine_is_refused_before_it_allocates_anything(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment(train={"epochs": 1})))
    command = [sys.executable, "-m", "hero_bench.cli", "train", "exp.yaml", "--quiet", "--set", "model.args.hidden=[65536, 65536, 65536]"]
    proc = psutil.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started, peak = time.monotonic(), 0
    try:
        while proc.poll() is None and time.monotonic() - started < 120 and peak < LIMIT:  # past LIMIT: stopped at once
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 2 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "hero-bench: error: model mlp (model.args.hidden=[65536, 65536, 65536]) has 8,591,376,387 parameters: ")
    assert peak < LIMIT, f"the process grew to {peak / 2**30:.1f} GiB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # nothing written
