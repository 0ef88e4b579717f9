"""--resume from plain files: a sweep continues without reading anything pickled.

What hero-bench keeps is enough: the experiment stored in sweep.json (the command's must match
it), the configurations a random or quasirandom search drew (sweep.json too; a new draw from the
file must match them), the Optuna journal of an optuna search (hero_bench.sweep.study), trials.csv,
and each trial's checkpoints under the Ray storage, a state.pt (loaded with weights_only) beside a
trial.json that names its sweep, trial and swept values. A sweep's trials follow from these: every
point of its grid or draws (or every configuration its studies asked), at every seed. A trial with a
valid finished row in trials.csv is done; every other one runs again in a new Tuner, from its latest
checkpoint and under its old id when it has one. Ray's own experiment state (tuner.pkl,
experiment_state-*.json, searcher state) is pickled and never read.
"""
import json
import re
from collections import defaultdict
from dataclasses import dataclass

import pyarrow.fs

from hero_bench import trials
from hero_bench.errors import ConfigError, HeroBenchError
from hero_bench.sweep.space import CONTINUES, trial_params
from hero_bench.sweep.trainable import STATE_FILE, TRIAL_FILE

# How trials are scheduled and tracked, not what they compute: a resumed sweep may change these.
SCHEDULING = ("sweep.max_concurrent_trials", "sweep.resources_per_trial.", "sweep.max_failures", "sweep.report_every_s", "tracking.")
TRIAL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what a trial.json may name (Ray's ids)


def check_unchanged(stored, config):
    """Refuse to resume a sweep with an experiment other than the one it ran (`stored`, a dict). A
    key the schema gained since the sweep ran (`plugins`, `sweep.bracket`) counts at its default."""
    old = flatten(stored)
    defaults = flatten(json.loads(json.dumps(type(config)().to_dict())))
    old.update({key: value for key, value in defaults.items() if not _recorded(key, old)})
    new = flatten(json.loads(json.dumps(config.to_dict())))
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and not k.startswith(SCHEDULING)]
    if changed:
        shown = ", ".join(f"{k} {old.get(k, 'unset')!r} -> {new.get(k, 'unset')!r}" for k in changed[:5])
        raise ConfigError(f"--resume: the experiment differs from the one this sweep ran in {len(changed)} key(s): {shown}"
                          f"{', ...' if len(changed) > 5 else ''}; resume with the same file and --set values, or start a "
                          "new sweep (another name, or --overwrite)")


def check_draws(stored, draws, marker):
    """Refuse to resume a random or quasirandom sweep whose configurations, drawn again from the
    file, are not those it ran (`stored`, from its sweep.json `marker`)."""
    if draws is not None and stored != json.loads(json.dumps(draws)):
        raise ConfigError(f"--resume: the configurations this file draws are not those the sweep ran ({marker} holds "
                          f"{'none' if stored is None else 'others'}; another numpy or scipy draws otherwise); start the "
                          "sweep again with --overwrite")


def _recorded(key, flat):
    """Whether the dotted `key`, or a key above or below it, is in the flattened config `flat`."""
    return any(k == key or k.startswith(key + ".") or key.startswith(k + ".") for k in flat)


def flatten(tree, prefix=""):
    """Dotted key -> value of every leaf of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@dataclass
class Saved:
    """The latest checkpoint of a trial: its swept values, epoch and location (path or URI)."""
    params: dict
    epoch: int
    uri: str


def find_checkpoints(experiment, sweep_id):
    """Trial id -> Saved, for every trial of sweep `sweep_id` with a checkpoint under `experiment`
    (the sweep's folder in the Ray storage: a path or a URI). Checkpoints are known by their
    trial.json (JSON, never code); one without a state.pt beside it, or of another sweep, is ignored."""
    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: cannot list the Ray storage {experiment}: {exc}") from None
    files = {info.path for info in infos if info.type == pyarrow.fs.FileType.File}
    latest = {}
    for path in sorted(files):
        folder, _, name = path.rpartition("/")
        if name != TRIAL_FILE or f"{folder}/{STATE_FILE}" not in files:
            continue
        try:
            with fs.open_input_stream(path) as stream:
                whose = json.loads(stream.readall())
        except (OSError, ValueError):
            continue
        if not (isinstance(whose, dict) and whose.get("sweep") == sweep_id and isinstance(whose.get("params"), dict)
                and TRIAL_ID.match(str(whose.get("trial_id"))) and isinstance(whose.get("epoch"), int)):
            continue
        saved = Saved(whose["params"], whose["epoch"], experiment.rstrip("/") + folder[len(root.rstrip("/")):])
        if whose["trial_id"] not in latest or saved.epoch > latest[whose["trial_id"]].epoch:
            latest[whose["trial_id"]] = saved
    return latest


@dataclass
class Plan:
    """What --resume runs. `rows`: the rows trials.csv keeps (trials that finished). `points`: the
    swept values of every trial left, with the id of the trial it continues, if any (`continues`).
    `checkpoints`: trial id -> the checkpoint it continues from. `damaged`: the rows left out, and why."""
    rows: list
    points: list
    checkpoints: dict
    damaged: list


def plan(configs, points, table, experiment, sweep_id):
    """The Plan that continues a sweep whose trials are `points` (every trial of its grid and of the
    stages decided after it, see space.trial_point; TrialConfigs `configs`) from its trials table
    `table` and its checkpoints under `experiment`.

    Rows and checkpoints are matched to the trials by what a trial runs, its config columns
    (trials.config_key): trials that run the same are interchangeable."""
    made = [trials.config_row(configs.get(p), trial_params(p)) for p in points]
    columns = sorted({c for r in made for c in r})
    keys = [trials.config_key(r, columns) for r in made]
    open_slots = defaultdict(list)  # config key -> points that no finished row accounts for
    for index, key in enumerate(keys):
        open_slots[key].append(index)
    frame, damaged = trials.parse(table) if table.exists() else (None, [])
    rows, unfinished = [], defaultdict(list)  # unfinished: config key -> ids of trials whose rows say failed
    for row in frame.to_dict("records") if frame is not None else []:
        key = trials.config_key(row, columns)
        if key not in open_slots:
            damaged.append(f"trial {row[trials.TRIAL_ID]}: not a trial of this experiment")
        elif row[trials.STATUS] not in trials.FINAL_STATUSES:
            if TRIAL_ID.match(row[trials.TRIAL_ID]):
                unfinished[key].append(row[trials.TRIAL_ID])
        elif not open_slots[key]:
            damaged.append(f"trial {row[trials.TRIAL_ID]}: one row more than its configuration has trials")
        else:
            open_slots[key].pop()
            rows.append(row)
    finished = {row[trials.TRIAL_ID] for row in rows}
    saved = {i: s for i, s in find_checkpoints(experiment, sweep_id).items() if i not in finished}
    resumable = defaultdict(list)  # config key -> ids of trials with a checkpoint
    for trial_id, s in sorted(saved.items()):
        try:
            resumable[trials.config_key(trials.config_row(configs.get(s.params), s.params), columns)].append(trial_id)
        except HeroBenchError:
            continue  # swept values this experiment does not have
    entries, checkpoints = [], {}
    for index in sorted(i for slots in open_slots.values() for i in slots):
        key, swept = keys[index], points[index]
        trial_id = next(iter(resumable[key] or [i for i in unfinished[key] if i not in saved]), None)
        if trial_id in saved:
            resumable[key].remove(trial_id)
            checkpoints[trial_id] = saved[trial_id].uri
        elif trial_id is not None:
            unfinished[key].remove(trial_id)
        entries.append({**swept, CONTINUES: trial_id} if trial_id else swept)
    return Plan(rows, entries, checkpoints, damaged)
