"""Read back what a wandb offline run logged, from its ``run-*.wandb`` file (a LevelDB-style record log)."""

import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32 * 1024
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    """Yield the serialized protobuf records of a .wandb file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # block trailer too small for a header: skip to the next block
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
        elif kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0


def _run_records(run_dir: Path, timeout: float = 30.0) -> list:
    """Every record of the offline run under ``run_dir``, once wandb's writer has recorded the run's exit."""
    (path,) = Path(run_dir).rglob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:  # the writer is a separate process: on a loaded machine it may trail wandb.finish()
        records = [pb.Record.FromString(raw) for raw in _records(path)]
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _typed_records(run_dir: Path, kind: str):
    """Yield the records of one type ("history", "config", ...) of the offline run under ``run_dir``."""
    for record in _run_records(run_dir):
        if record.WhichOneof("record_type") == kind:
            yield getattr(record, kind)


def logged_history(run_dir: Path) -> dict[str, list]:
    """``{key: [value per row]}`` logged by the offline run under ``run_dir`` (media: dicts of fields)."""
    history: dict[str, list] = {}
    for rows in _typed_records(run_dir, "history"):
        row: dict[str, object] = {}
        for item in rows.item:
            top, *field = [item.key] if item.key else item.nested_key
            if not field:  # a scalar: "train/loss" -> "0.91"
                row[top] = item.value_json
            else:  # a media object, one item per field: ["samples/video", "_type"] -> '"videos"'
                row.setdefault(top, {})["/".join(field)] = item.value_json
        for key, value in row.items():
            history.setdefault(key, []).append(value)
    return history


def logged_config(run_dir: Path) -> dict[str, str]:
    """``{key: json value}`` of the run config recorded by the offline run in ``run_dir``."""
    return {
        item.key or "/".join(item.nested_key): item.value_json
        for config in _typed_records(run_dir, "config")
        for item in config.update
    }


def logged_run(run_dir: Path) -> dict:
    """The run's identity as the offline run under ``run_dir`` recorded it: group, tags, job type, name."""
    (run,) = list(_typed_records(run_dir, "run"))[:1]
    return {
        "group": run.run_group,
        "tags": list(run.tags),
        "job_type": run.job_type,
        "name": run.display_name,
    }
