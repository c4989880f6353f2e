"""What the benchmark scripts share: the GSM8K scripts' common flags, writing a table of rows as
markdown and JSON, and dynamo's count of compiled graphs."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path


def gsm8k_parser(doc: str, family: str, prompts: int, threads: int) -> argparse.ArgumentParser:
    """A parser with --family, --prompts, --max-new-tokens, --threads and --data-dir (GSM8K dev prompts)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--family", default=family, help="gsm8k-tiny, gsm8k-base or a family folder")
    p.add_argument("--prompts", type=int, default=prompts, help="GSM8K dev prompts (the first N)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=threads, help="torch threads")
    p.add_argument("--data-dir", default=None, help="folder holding gsm8k/ (default: $CSD_DATA_DIR)")
    return p


def write_table(out, stem: str, head: str, rows: list[dict], cols: list[str], meta: dict, digits: int = 3) -> str:
    """`<out>/<stem>.md` (`head`, then a table of `cols`; floats to `digits` significant digits, "-" where a row
    lacks a column) and `<out>/<stem>.json` (`meta`, the rows, the time of measurement); returns the markdown."""
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * 2 + "---:|" * (len(cols) - 2)]
    for r in rows:
        cells = [r.get(c, "-") for c in cols]
        lines.append("| " + " | ".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in cells) + " |")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows, "measured_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds")}, indent=1) + "\n")
    return text


def compiled_graphs() -> int:
    """Graphs torch.compile (dynamo) compiled so far in this process."""
    import torch._dynamo

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
