"""benchmarks/gpu.sh, the prepared GPU run, in its fast CPU mode: it runs, audits every output and writes
its tables where $OUT says (the GPU mode itself needs a GPU: see docs/half-precision.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_fast_cpu_path_writes_audited_tables(tmp_path):
    env = {**os.environ, "GPU_SH_FAST": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    md = (tmp_path / "gsm8k-tiny" / "speed.md").read_text()
    assert "**bfloat16** (target logits in float32)" in md and ", 2 prompts" in md and "| CSD |" in md
    assert "both tuned in this run" in md                                     # the cascade is tuned for the machine
    result = json.loads((tmp_path / "gsm8k-tiny" / "speed.json").read_text())
    rows = result["runs"][0]["rows"]
    assert result["cpu_isa"] in ("AMX-BF16", "AVX512-BF16", "neither") and result["device"] == "cpu"
    assert {r["method"] for r in rows} >= {"HF greedy", "AR", "CSD", "HF prompt lookup(10)", "HF greedy (static cache)",
                                          "CSD (static cache)"}
    assert any(r["method"].startswith("tree CSD w") for r in rows)          # tree drafts, audited like the rest
    assert all(r["identical"] + r["tie"] + r["WRONG"] == 2 and r["WRONG"] == 0 for r in rows)
