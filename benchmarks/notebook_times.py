"""How long each notebook takes to run top to bottom, as CI runs it (one torch thread, nbclient).

Usage: python benchmarks/notebook_times.py [--out DIR]

Each notebook in notebooks/ runs in its own kernel from its folder, with `THREADS = 1` injected after its
parameters cell; what the notebooks write goes to the git-ignored tmp/ as when a person runs them. Writes
notebook_times.json under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csdlib.precision import hardware  # noqa: E402


def run(path: Path) -> float:
    """Seconds to execute the notebook at `path`, on one torch thread."""
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("THREADS = 1"))
    tic = time.perf_counter()
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - tic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="also write notebook_times.json here")
    args = ap.parse_args()
    rows = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        rows.append({"notebook": path.stem, "seconds": run(path)})
        print(f"{path.stem}: {rows[-1]['seconds']:.1f} s", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "notebook_times.json").write_text(json.dumps({
            "rows": rows, "threads": 1, "command": "python benchmarks/notebook_times.py " + " ".join(sys.argv[1:]),
            **hardware(), "torch": torch.__version__, "python": platform.python_version(),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
