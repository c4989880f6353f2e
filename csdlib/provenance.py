"""Where `csd run`'s numbers come from: records replayed from an earlier run (when, on which machine),
`--force` setting them aside, and how busy the machine was while measuring (wall-clock figures from a
busy machine are unreliable; the warning is kept in the records)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from .experiment import read_all_records, read_records


def earlier_records(out, hashes, sample_ids) -> list[dict]:
    """The records of `out` (and its shards) that a run of these configurations and samples replays."""
    sample_ids = {str(s) for s in sample_ids}
    return [r for r in read_all_records(out) if r.get("config_hash") in hashes and r.get("sample_id") in sample_ids]


def replay_line(records: list[dict], wanted: int) -> str:
    """``replay: 500 of 500 records measured 2026-11-28 14:02-14:05 UTC on <machine>, 2 threads ...``."""
    dates = sorted(r["finished_at"] for r in records if r.get("finished_at"))
    when = f"{dates[0][:16].replace('T', ' ')}-{dates[-1][11:16]} UTC" if dates else "at an unknown time"
    machines = sorted({r.get("environment", {}).get("machine", "an unknown machine") for r in records})
    threads = sorted({str(r["threads"]) for r in records if r.get("threads") is not None})
    busy = sum(bool(r.get("load_warning")) for r in records)
    return (f"replay: {len(records)} of {wanted} records are from an earlier run, measured {when} on "
            f"{', '.join(machines)}, {'/'.join(threads) or '?'} thread(s)"
            + (f", {busy} of them on a busy machine" if busy else "")
            + "; --force measures them again")


def set_aside(out) -> list[Path]:
    """`--force`: move the results file, its shards and its measured costs to ``<name>.before-<UTC time>``
    names, so that nothing is replayed and nothing is lost."""
    out = Path(out)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for p in [out, *out.parent.glob(f"{out.stem}.shard*{out.suffix}"), out.with_name(out.stem + ".costs.json")]:
        if p.is_file():
            moved.append(p.rename(p.with_name(f"{p.name}.before-{stamp}")))
    return moved


def machine_load(own_threads: int = 0) -> dict:
    """The 1-minute load average, the cores, and what other processes add (the load minus this run's
    own threads, when it has been computing)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cpus = os.cpu_count() or 1
    return {"load_1min": round(load, 2), "cpus": cpus, "others": round(max(0.0, load - own_threads), 2),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def busy_warning(load: dict, when: str) -> str | None:
    """A warning when other processes kept half a core (or a tenth of the cores) busy, else None."""
    if load["others"] < max(0.5, 0.1 * load["cpus"]):
        return None
    return (f"warning: the machine was busy {when} the run (load average {load['load_1min']:.2f} on "
            f"{load['cpus']} cores, about {load['others']:.1f} from other processes): wall-clock figures "
            "(wall speedup, tokens/s, SWI measured) are unreliable; rerun on a quiet machine with --force")


def stamp(out, run_id: str, fields: dict) -> int:
    """Add `fields` to the records of `out` written by run `run_id` (atomically); returns how many."""
    out = Path(out)
    records = read_records(out)
    hit = 0
    for r in records:
        if r.get("run_id") == run_id:
            r.update(fields)
            hit += 1
    if hit:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, out)
    return hit
