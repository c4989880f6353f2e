"""Where a cascade pays: CSD's wall-clock gain over the best single drafter against what the cascade's
largest neural drafter costs next to its target, from the committed speed.py runs (one point per family
and dtype; each run's own latency model gives the costs).

    python benchmarks/cascade_gain.py            # figures/cascade-gain.png and data/results/cascade-gain.json

Nothing is measured here: every number comes from a speed.py run's results file, each ratio within one run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csdlib import plots  # noqa: E402

RUNS = ["data/results/speed-gsm8k-tiny/speed.json", "data/results/speed-gsm8k-base/speed.json",
        "data/results/speed-gsm8k-base-bfloat16/speed.json", "data/results/speed-smollm2-bfloat16/speed.json",
        "data/results/speed-smollm2-float32/speed.json"]


def points(paths=RUNS) -> pd.DataFrame:
    rows = []
    for path in paths:
        if not (ROOT / path).is_file():
            continue
        d = json.loads((ROOT / path).read_text())
        for run in d["runs"]:
            lat, df = run["latency"], pd.DataFrame(run["rows"]).set_index("method")
            neural = [n for n in lat if n not in ("target", "mag")]
            sd = df[df["kind"] == "csdlib SD"]
            rows.append({"label": f"{d['family']} {run['dtype']}", "family": d["family"], "dtype": run["dtype"],
                         "drafter cost": max(lat[n]["a1"] for n in neural) / lat["target"]["a1"],
                         "smallest drafter cost": min(lat[n]["a1"] for n in neural) / lat["target"]["a1"],
                         "CSD / best SD": float(df.loc["CSD", "tokens/s"] / sd["tokens/s"].max()),
                         "CSD x HF greedy": float(df.loc["CSD", "x HF greedy"]), "best SD": sd["tokens/s"].idxmax(),
                         "cpu": d.get("cpu"), "cpu_isa": d.get("cpu_isa"), "threads": d["threads"],
                         "results": path})
    return pd.DataFrame(rows)


def main() -> int:
    df = points()
    plots.cascade_gain(df, ROOT / "figures" / "cascade-gain.png")
    (ROOT / "data" / "results" / "cascade-gain.json").write_text(json.dumps(df.to_dict("records"), indent=2) + "\n")
    print(df[["label", "drafter cost", "CSD / best SD", "CSD x HF greedy", "best SD"]].round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
