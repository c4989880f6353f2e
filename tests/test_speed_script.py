"""benchmarks/speed.py keeps what it measured when a run dies part-way: its tables are rewritten after
every prompt (marked incomplete), so a killed GPU run still leaves the prompts it finished."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

FAST = ["--family", "gsm8k-tiny", "--dtypes", "float32", "--prompts", "3", "--max-new-tokens", "8", "--device", "cpu",
        "--threads", "1", "--tune-prompts", "1", "--ks", "2", "--warmup", "0", "--peers", "default", "--quiet"]


def test_a_run_killed_after_two_prompts_leaves_their_tables(tmp_path, monkeypatch):
    import speed

    audits = []
    real = speed.audit

    def audit(*a, **k):                                  # the kill arrives during the third prompt's audit
        audits.append(1)
        if len(audits) > 2 * n_methods[0]:
            raise KeyboardInterrupt
        return real(*a, **k)

    n_methods = [0]
    real_build = speed.build_methods

    def build_methods(*a, **k):
        methods = real_build(*a, **k)
        n_methods[0] = len(methods)
        return methods

    monkeypatch.setattr(speed, "audit", audit)
    monkeypatch.setattr(speed, "build_methods", build_methods)
    out = tmp_path / "speed"
    with pytest.raises(KeyboardInterrupt):
        speed.main(FAST + ["--out", str(out), "--latency-file", str(tmp_path / "latency.json")])
    d = json.loads((out / "speed.json").read_text())
    assert d["complete"] is False and d["runs"][0]["prompts"] == 2
    rows = d["runs"][0]["rows"]
    assert {r["method"] for r in rows} >= {"HF greedy", "AR", "CSD"}
    assert all(r["identical"] + r["tie"] + r["WRONG"] == 2 for r in rows)
    assert "**Incomplete**" in (out / "speed.md").read_text()

    monkeypatch.setattr(speed, "audit", real)            # the same run, not killed: complete, 3 prompts
    assert speed.main(FAST + ["--out", str(out), "--latency-file", str(tmp_path / "latency.json")]) == 0
    d = json.loads((out / "speed.json").read_text())
    assert d["complete"] is True and d["runs"][0]["prompts"] == 3
    assert "**Incomplete**" not in (out / "speed.md").read_text()
