"""The tiny experiment that tests start from: synthetic data, a one-hidden-layer mlp, SGD, no
end-of-trial evaluation, W&B off. Each test replaces what it is about with `experiment(...)`."""
import json

NO_EVAL = {"ptq_bits": [], "hessian": {"top_eigenvalue": False, "trace": False}, "weight_noise": {"sigmas": []}}
TINY = {
    "name": "rel",
    "data": {"name": "synthetic", "args": {"num_samples": 256, "input_shape": [1, 4, 4], "num_classes": 3}},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "threads": 1},
    "optimizer": {"name": "sgd"},
    "evaluate": NO_EVAL,
    "sweep": {"seeds": [0], "resources_per_trial": {"cpu": 1}},
    "tracking": {"wandb": "disabled"},
}


def experiment(**sections):
    """TINY with some sections' keys replaced (one level deep), as a plain dict."""
    raw = json.loads(json.dumps(TINY))
    for section, values in sections.items():
        raw[section] = {**raw[section], **values} if isinstance(values, dict) else values
    return raw
