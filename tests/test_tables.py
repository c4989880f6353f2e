"""benchmarks/tables.py: every measured table of README.md and docs/ is what its committed results give."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tables():
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tables"] = module                   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_table_is_what_its_results_give():
    """Nobody edits a marked table by hand: re-rendering every one from data/results changes nothing."""
    tables = _tables()
    assert tables.rewrite(tables.TABLES, check=True) == []
    assert tables.main(["--check"]) == 0
    for t in tables.TABLES:                          # each table's results and pages exist, and its markers
        assert (ROOT / t.results).is_file(), t.results
        for page in t.pages:
            assert tables.marked(t.name).search((ROOT / page).read_text()), (page, t.name)


def test_a_changed_result_shows_as_an_out_of_date_page(tmp_path, monkeypatch):
    """--check fails (exit 1) when a results file no longer gives the page's table; a rewrite fixes it."""
    tables = _tables()
    for d in ("docs", "data/results/speed-gsm8k-tiny", "data/results/speed-gsm8k-base",     # and the README's
              "data/results/speed-smollm2-bfloat16", "data/results/speed-smollm2-float32",  # other rows
              "data/results/spec-bench-smollm2-general-float32-peers"):
        shutil.copytree(ROOT / d, tmp_path / d)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    speed = [t for t in tables.TABLES if t.name in ("speed-gsm8k-tiny", "readme-speed")]
    assert tables.rewrite(speed, check=True) == []
    path = tmp_path / "data/results/speed-gsm8k-tiny/speed.json"
    data = json.loads(path.read_text())
    data["runs"][0]["rows"][0]["tokens/s"] *= 2
    path.write_text(json.dumps(data))
    assert tables.rewrite(speed, check=True) == ["docs/benchmarks.md (speed-gsm8k-tiny)"]
    assert tables.rewrite(speed) == ["docs/benchmarks.md (speed-gsm8k-tiny)"]
    assert tables.rewrite(speed, check=True) == []
    (tmp_path / "README.md").write_text("no markers here\n")
    with pytest.raises(SystemExit, match="README.md: no markers for table 'readme-speed'"):
        tables.rewrite(speed)


def test_unknown_table_names_are_refused():
    with pytest.raises(SystemExit, match=r"--measure: unknown table\(s\) \['nope'\]"):
        _tables().main(["--measure", "nope"])
