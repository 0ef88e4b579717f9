"""Read an offline W&B run back from its `run-<id>.wandb` file, independently of wandb's writer.

The file is a LevelDB-style log (the format wandb documents for its transaction log): a 7-byte
header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC-32C, length, type FULL/FIRST/MIDDLE/LAST); a block's tail shorter than a chunk header is zero
padding. Each whole record is a protobuf `wandb.proto.wandb_internal_pb2.Record`.
"""
import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path):
    """Every Record of a .wandb file, in order."""
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B transaction log"
    offset, pending = FILE_HEADER.size, b""
    while offset + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < CHUNK_HEADER.size:
            offset += left_in_block
            continue
        _crc, length, kind = CHUNK_HEADER.unpack_from(data, offset)
        start = offset + CHUNK_HEADER.size
        chunk, offset = data[start:start + length], start + length
        if kind == 0 and length == 0:  # zero padding at the end of a file still being written
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def items(entries):
    """A HistoryItem/SummaryItem/ConfigItem list as a dict of decoded JSON values; a nested key
    (["leaderboard", "_type"]) becomes nested dicts."""
    out = {}
    for entry in entries:
        *parents, last = entry.nested_key or [entry.key]
        target = out
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = json.loads(entry.value_json)
    return out


def read_run(run_dir):
    """An offline run folder as {"run": RunRecord, "config": nested dict, "history": [rows],
    "summary": dict, "exit_code": int | None, "metrics": [MetricRecord], "output": [console lines],
    "artifacts": [ArtifactRecord]}."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    out = {"run": None, "config": {}, "history": [], "summary": {}, "exit_code": None, "metrics": [], "output": [],
           "artifacts": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update(items(record.run.config.update))
        elif kind == "config":
            out["config"].update(items(record.config.update))
        elif kind == "history":
            out["history"].append(items(record.history.item))
        elif kind == "summary":
            out["summary"].update(items(record.summary.update))
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
        elif kind == "metric":
            out["metrics"].append(record.metric)
        elif kind in ("output", "output_raw"):
            out["output"].append(getattr(record, kind).line)
        elif kind == "artifact":
            out["artifacts"].append(record.artifact)
    return out


def read_runs(wandb_dir):
    """Every offline run under `wandb_dir` (a `wandb/` folder) by run id: the attempts of a run (a
    resumed run has a folder per attempt), each as `read_run` gives it, in the order they started."""
    runs = {}
    for folder in Path(wandb_dir).glob("offline-run-*"):
        attempt = read_run(folder)
        runs.setdefault(attempt["run"].run_id, []).append(attempt)
    for attempts in runs.values():
        attempts.sort(key=lambda a: a["run"].start_time.ToNanoseconds())
    return runs
