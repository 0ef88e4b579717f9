"""The metric catalog: every key a trial reports, declared once with what a reader of the results needs.

A `Metric` says what a key means (`title`), whether higher or lower is better, its unit and display
precision, and whether it is reported every epoch, shown on the leaderboard, compared between
families (comparisons.csv) or text. A key may carry one parameter in braces, `ptq_acc_{bits}bit`,
`weight_noise_acc_{sigma:g}`: the code that reports the metric builds its keys with `Metric.key`,
and `describe` maps a column of the trials table back to its Metric and parameter. This module is
the only one that reads a metric's name; the leaderboard, comparisons, figures and report ask it.

The built-in metrics are declared below, grouped by what reports them (the trainer, then each
evaluator of hero_bench.metrics); definitions are in docs/metrics.md. A plugin's metric is declared
with `declare` (docs/extending.md) and then appears in the tables and the report like a built-in.
Torch-free: the results side reads the catalog without importing torch.
"""
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from hero_bench.errors import ConfigError

_PLACEHOLDER = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_PARAMETER_PATTERN = {"bits": r"\d+", "sigma": r"[0-9.eE+-]+"}  # what a parameter's value looks like in a key
_ANY = r"[0-9A-Za-z.eE+-]+"


@dataclass(frozen=True)
class Metric:
    """One metric key (or a family of keys with one parameter) and how to read it.

    name: the key, or a template with one `{parameter}` (a format spec allowed: `{sigma:g}`).
    higher_is_better: True, False, or None where neither is (a count, a time that is no goal).
    decimals: display precision; None: three significant digits.
    kind: what it measures, for grouping in figures and the report ("accuracy", "ptq_acc", ...).
    variant: a variant of the kind ("per channel" quantization).
    descending: order the parameter's values from high to low (bit widths) instead of low to high.
    per_epoch: reported after every epoch (a sweep.metric must be one of these).
    shown: a column of the leaderboard. compared: compared between families in comparisons.csv.
    text: text, not a number (never averaged).
    source: what reports it: "train" or the name of an evaluator (hero_bench.metrics.METRICS).
    """

    name: str
    title: str
    higher_is_better: bool | None = None
    unit: str = ""
    decimals: int | None = None
    kind: str = ""
    variant: str = ""
    descending: bool = False
    per_epoch: bool = False
    shown: bool = False
    compared: bool = False
    text: bool = False
    source: str = "train"
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(_PLACEHOLDER.findall(self.name)) > 1:
            raise ValueError(f"metric {self.name!r}: a key takes at most one parameter")
        object.__setattr__(self, "pattern", _pattern(self.name))

    @property
    def parameter(self):
        """The parameter's name (bits, sigma), or None for a plain key."""
        found = _PLACEHOLDER.findall(self.name)
        return found[0] if found else None

    def key(self, value=None):
        """The key for a parameter value: PTQ_ACC.key(3) == "ptq_acc_3bit"."""
        return self.name.format(**{self.parameter: value}) if self.parameter else self.name


def _pattern(template):
    """The regular expression of a template's keys: its text, and the parameter as a named group."""
    regex, end = "", 0
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        regex += re.escape(template[end:match.start()]) + f"(?P<{name}>{_PARAMETER_PATTERN.get(name, _ANY)})"
        end = match.end()
    return re.compile(regex + re.escape(template[end:]))


@dataclass(frozen=True)
class Entry:
    """A column of the trials table as the catalog knows it: its Metric and parameter value."""

    metric: Metric
    value: object = None

    @property
    def column(self):
        return self.metric.key(self.value)


CATALOG = []  # every declared Metric, in declaration order (the order of leaderboard columns)


def declare(*metrics):
    """Add metrics to the catalog. A key declared twice is refused, naming both sources."""
    for metric in metrics:
        for known in CATALOG:
            if known.name == metric.name:
                raise ConfigError(f"metric {metric.name!r} is declared twice: by {known.source} and by {metric.source}")
        CATALOG.append(metric)
    return metrics


def describe(column):
    """The Entry of a trials-table column, or None when no declared metric has that key."""
    for metric in CATALOG:
        match = metric.pattern.fullmatch(column)
        if match:
            if not metric.parameter:
                return Entry(metric)
            text = match.group(metric.parameter)
            return Entry(metric, int(text) if metric.parameter == "bits" else float(text))
    return None


def entries(columns, **having):
    """The Entries of `columns` that the catalog knows, whose Metric has every attribute of `having`
    (e.g. kind="ptq_acc", variant=""), in catalog order: by declaration, then by parameter value."""
    found = [e for e in map(describe, columns) if e is not None
             and all(getattr(e.metric, k) == v for k, v in having.items())]
    return sorted(found, key=_order)


def _order(entry):
    value = entry.value if entry.value is not None else 0
    return CATALOG.index(entry.metric), -value if entry.metric.descending else value


def decimals(column, value):
    """Display precision of a value of `column`: the metric's own, else three significant digits."""
    entry = describe(column)
    if entry is not None and entry.metric.decimals is not None:
        return entry.metric.decimals
    if not value:
        return 2
    return int(min(4, max(0, 2 - math.floor(math.log10(abs(value))))))


def per_epoch():
    """The keys every epoch reports (a sweep.metric must be one: Ray Tune needs it in each report)."""
    return [m.name for m in CATALOG if m.per_epoch]


def is_text(column):
    entry = describe(column)
    return entry is not None and entry.metric.text


# ---------------------------------------------------------------------------------------------
# The built-in metrics

ACCURACY = dict(higher_is_better=True, unit="%", decimals=2)

# reported after every epoch by hero_bench.train
VAL_ACC, TEST_ACC, TRAIN_ACC, TRAIN_LOSS, LR, EPOCH, EPOCH_TIME = declare(
    Metric("val_acc", "validation accuracy", **ACCURACY, kind="accuracy", per_epoch=True, shown=True),
    Metric("test_acc", "test accuracy", **ACCURACY, kind="accuracy", per_epoch=True, shown=True, compared=True),
    Metric("train_acc", "accuracy on the epoch's batches (labels trained on)", **ACCURACY, kind="accuracy", per_epoch=True),
    Metric("train_loss", "mean training loss of the epoch", higher_is_better=False, per_epoch=True),
    Metric("lr", "learning rate after the epoch", per_epoch=True),
    Metric("epoch", "the epoch just finished", decimals=0, per_epoch=True),
    Metric("epoch_time_s", "wall time of the epoch's training", unit="s", per_epoch=True),
)
# reported at the end of training by hero_bench.train
TEST_ACC_AT_BEST_VAL, MAX_TEST_ACC, BEST_VAL_EPOCH, TRAIN_ACC_CLEAN, TRAIN_ACC_NOISY, GEN_GAP = declare(
    Metric("test_acc_at_best_val", "test accuracy at the epoch of best validation accuracy", **ACCURACY,
           kind="accuracy", compared=True),
    Metric("max_test_acc", "highest test accuracy of any epoch (chosen by test: for comparison with the paper only)",
           **ACCURACY, kind="accuracy"),
    Metric("best_val_epoch", "first epoch with the highest validation accuracy", decimals=0),
    Metric("train_acc_clean", "accuracy on the training inputs with their clean labels", **ACCURACY, kind="accuracy"),
    Metric("train_acc_noisy", "accuracy on the labels trained on (memorization)", unit="%", decimals=2,
           kind="memorization"),
    Metric("gen_gap", "train_acc_clean − test_acc", higher_is_better=False, unit="points", decimals=2, shown=True),
)
LABEL_NOISE_REALIZED, RESUMED_FROM_EPOCH, EPOCHS_DONE = declare(
    Metric("label_noise_realized", "fraction of training labels that differ from the clean ones"),
    Metric("resumed_from_epoch", "the epoch a resumed trial continued from", decimals=0),
    Metric("epochs_done", "epochs trained", decimals=0),
)
DEVICE, GPU_IDS = declare(
    Metric("device", "where the trial trained (cpu, cuda:0)", text=True),
    Metric("gpu_ids", "the GPUs Ray gave the trial", text=True),
)

# reported by the evaluator "ptq" (hero_bench.metrics)
PTQ = dict(kind="ptq_acc", descending=True, source="ptq")
PTQ_ACC, PTQ_ACC_PER_CHANNEL = declare(
    Metric("ptq_acc_{bits}bit", "test accuracy after post-training quantization to b bits", **ACCURACY, **PTQ,
           shown=True),
    Metric("ptq_acc_{bits}bit_per_channel", "the same with one scale per output channel", **ACCURACY, **PTQ,
           variant="per channel", shown=True),
)
DROP = dict(kind="ptq_drop", descending=True, source="ptq", higher_is_better=False, unit="points", decimals=2,
            compared=True)
PTQ_DROP, PTQ_DROP_PER_CHANNEL = declare(
    Metric("ptq_drop_{bits}bit", "test accuracy lost to b-bit quantization", **DROP),
    Metric("ptq_drop_{bits}bit_per_channel", "the same with one scale per output channel", **DROP,
           variant="per channel"),
)
# reported by the evaluator "hessian"
HESSIAN_TOP_EIG, HESSIAN_TRACE, HESSIAN_DENSITY = declare(
    Metric("hessian_top_eig", "largest eigenvalue of the training loss's Hessian", higher_is_better=False,
           kind="curvature", shown=True, source="hessian"),
    Metric("hessian_trace", "trace of the training loss's Hessian (Hutchinson)", higher_is_better=False,
           kind="curvature", shown=True, source="hessian"),
    Metric("hessian_density", "eigenvalue density (stochastic Lanczos quadrature), as JSON", text=True,
           source="hessian"),
)


def density_to_json(nodes, weights):
    """The `hessian_density` value: {"nodes": [θ...], "weights": [τ...]} as one JSON string (a trial's
    density is no scalar; trials.csv keeps it as text), 7 significant digits."""
    return json.dumps({"nodes": [float(f"{t:.7g}") for t in np.asarray(nodes, dtype=float).tolist()],
                       "weights": [float(f"{w:.7g}") for w in np.asarray(weights, dtype=float).tolist()]})


def density_from_json(text):
    """(nodes, weights) as float64 numpy arrays from a `hessian_density` value."""
    value = json.loads(text)
    return np.array(value["nodes"], dtype=float), np.array(value["weights"], dtype=float)


# reported by the evaluator "weight_noise"
(WEIGHT_NOISE_ACC,) = declare(
    Metric("weight_noise_acc_{sigma:g}", "mean test accuracy under Gaussian weight noise of norm σ‖W‖", **ACCURACY,
           kind="weight_noise", shown=True, source="weight_noise"),
)
# reported by hero_bench.train: what the trial cost
TIME_PER_EPOCH, GRAD_EVALS, HVP_EVALS, HVP_FALLBACK_STEP, SAMPLES_PER_S, PEAK_MEM, TRAIN_TIME, CPU_TIME, EVAL_TIME = declare(
    Metric("time_per_epoch_s", "mean wall time of a training epoch", higher_is_better=False, unit="s", kind="cost",
           shown=True),
    Metric("grad_evals", "gradients of the batch loss computed", higher_is_better=False, decimals=0, kind="cost",
           shown=True),
    Metric("hvp_evals", "exact Hessian-vector products computed", higher_is_better=False, decimals=0, kind="cost"),
    Metric("hvp_fallback_step", "step at which hvp auto switched to exact", decimals=0),
    Metric("samples_per_s", "training samples per second", higher_is_better=True, kind="cost"),
    Metric("peak_mem_mb", "peak memory", higher_is_better=False, unit="MB", kind="cost"),
    Metric("train_time_s", "wall time of training", higher_is_better=False, unit="s", kind="cost"),
    Metric("cpu_time_s", "CPU time of training and evaluation", higher_is_better=False, unit="s", kind="cost"),
    Metric("eval_time_s", "wall time of the end-of-training evaluators", unit="s", kind="cost"),
)
