"""The record store of `csdlib.experiment`: record keys, the JSONL results files and their shards.

- A record's key covers everything that determines it: the method's configuration (`config_hash`:
  models' names, costs and full fingerprints - config, generation_config, every weight -, k-matrix,
  lenience, sampling settings; how a model runs, `latency.runtime`: prepacked layers, a static KV
  cache), the data source (dataset, split, template), max_new_tokens, the
  prompt's token ids, and where it was measured (`environment`: machine, device, threads, library
  versions). Records made on another machine or with other threads are never reused.
- Every record is appended (and flushed) to the JSONL file as soon as its sample finishes
  (`append_record`). A torn last line (a crash mid-write) is ignored on reading (`read_records`) and
  cut off before the next append (`cut_torn_tail`); a complete last line without its newline is kept.
- Sharding: process `index` of a sharded run writes `shard_path(out, index)`; `read_all_records` /
  `load_results` read a results file together with its shards and `merge_shards` folds them into it.
- A record holds its `Stats` (`Stats.to_dict()`: calls, tokens fed, ... per model, acceptance per level
  and position); `load_results` flattens dict fields into columns (`calls.<model>`), and
  `Stats.from_dict` reads a record, or a row of that frame, back.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from .errors import CSDValueError
from .protocol import fingerprint, replays
from .sampling import resolve_sampling


def environment(target=None) -> dict:
    """Where measurements are made: machine, CPU and its bf16 units, device, torch threads and library
    versions. Records made under another environment are never reused (wall times and measured costs
    differ)."""
    import transformers

    from .precision import hardware

    device = getattr(target, "device", None) or torch.device("cpu")
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    cpu = hardware()
    return {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
            "cpu": cpu["cpu"], "cpu_isa": cpu["cpu_isa"],
            "device": f"{device.type}: {name}", "threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "csdlib": __version__}}


def digest(obj) -> str:
    """A short hash of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def context_of(target, source: dict, max_new_tokens: int, env: dict) -> dict:
    """What every method of one run shares: the target, the data, max_new_tokens, the environment."""
    return {"target": fingerprint(target), "target_name": target.name, "target_cost": float(target.cost),
            "target_mode": "cached" if replays(target) else "model",
            "source": source, "max_new_tokens": max_new_tokens, "environment": env}


def config_hash(target, method, dataset, max_new_tokens: int, env: dict | None = None) -> str:
    """Hash of everything that determines a method's records (`experiment.Method`) except the prompt (see
    the module doc). `dataset`: a name or a dict describing the data source (dataset, split, template)."""
    source = dataset if isinstance(dataset, dict) else {"dataset": dataset}
    env = env if env is not None else environment(target)
    kwargs = dict(method.generate_kwargs)
    if kwargs.get("do_sample"):       # sampling settings as generate() resolves them
        kwargs.update(resolve_sampling(target, kwargs.get("temperature"), kwargs.get("top_k"),
                                       kwargs.get("top_p")))
    config = {"method": method.name, "context": context_of(target, source, max_new_tokens, env),
              "drafters": [[d.name, float(d.cost), fingerprint(d)] for d in method.drafters],
              "k_matrix": method.k_matrix, "lenience": float(method.lenience), "generate_kwargs": kwargs}
    from .latency import runtime

    runs = {m.name: r for m in [target, *method.drafters] if (r := runtime(m))}
    if runs:                          # packed layers, static caches: the same outputs, other wall times
        config["runtime"] = runs
    return digest(config)


# ---------------------------------------------------------------- the JSONL files


def read_records(path) -> list[dict]:
    """Records of a JSONL file; a torn last line is ignored, a corrupt line elsewhere raises."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and not _is_record(lines[-1]):
        lines = lines[:-1]                                  # after the last newline: torn (or empty)
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CSDValueError(f"results file {str(path)!r}: line {n} is not valid JSON ({e})") from None
    return records


def _is_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def cut_torn_tail(path: Path) -> None:
    """Make the next append start on a line of its own: a complete last record without its newline
    gets one; an unfinished last line (a crash mid-write) is dropped."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        tail = data[data.rfind(b"\n") + 1:]
        if _is_record(tail.decode("utf-8", errors="replace")):
            f.write(b"\n")
        else:
            f.truncate(data.rfind(b"\n") + 1)


def append_record(path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def shard_path(out, index: int) -> Path:
    """Where process `index` of a sharded run writes: `<out stem>.shard<index>.jsonl` next to `out`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{index}{out.suffix}")


def _all_files(out) -> list[Path]:
    out = Path(out)
    return [out] + sorted(out.parent.glob(f"{out.stem}.shard*{out.suffix}"))


def read_all_records(out) -> list[dict]:
    """Records of `out` and of its shard files, one per key (first occurrence wins)."""
    seen, records = set(), []
    for p in _all_files(out):
        for r in read_records(p):
            if r["key"] not in seen:
                seen.add(r["key"])
                records.append(r)
    return records


def merge_shards(out) -> int:
    """Fold the shard files of `out` into `out` (atomically, no duplicates) and delete them."""
    out = Path(out)
    records = read_all_records(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, out)
    for p in _all_files(out)[1:]:
        p.unlink()
    return len(records)


def load_results(out) -> pd.DataFrame:
    """All records of a results file (and its shards) as a DataFrame; dict fields are flattened to
    columns such as `calls.<model>`, `swi.<cost table>`."""
    return to_frame(read_all_records(out))


def to_frame(records: list[dict]) -> pd.DataFrame:
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, max_level=1)
