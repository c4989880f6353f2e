"""benchmarks/speed.py keeps what it measured when a run dies part-way: its tables are rewritten after
every prompt (marked incomplete), so a killed GPU run still leaves the prompts it finished."""

import json
import sys
from pathlib import Path

import pytest
import torch

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


def test_spec_bench_turns_and_its_table(tmp_path):
    """--dataset spec-bench: an MT-bench question's two turns (the second after HF greedy's own answer) and
    a QA question, every method on each, audited; the table in Spec-Bench's layout, per group."""
    import speed

    out = tmp_path / "speed"
    assert speed.main(FAST[:4] + FAST[6:] + ["--dataset", "spec-bench", "--categories", "mt-bench,qa",
                                            "--per-category", "1", "--out", str(out),
                                            "--latency-file", str(tmp_path / "latency.json")]) == 0
    d = json.loads((out / "speed.json").read_text())
    run = d["runs"][0]
    assert d["dataset"] == "spec-bench" and run["prompts"] == 3        # 2 turns + 1
    assert all(r["identical"] == 3 for r in run["rows"])
    groups = {g["method"]: g for g in run["groups"]}
    assert set(groups["CSD"]) >= {"Multi-turn Conversation", "QA", "Overall", "mean accepted tokens"}
    assert groups["HF greedy"]["Overall"] == 1.0 and groups["HF greedy"]["mean accepted tokens"] is None
    assert groups["CSD"]["mean accepted tokens"] >= 1.0
    assert "Spec-Bench's layout" in (out / "speed.md").read_text()
    assert [t["group"] for t in run["turns"]["CSD"]] == ["Multi-turn Conversation"] * 2 + ["QA"]   # per prompt


def test_skip_leaves_methods_out_but_never_the_baseline(tmp_path, capsys):
    import speed

    args = FAST + ["--prompts", "1", "--out", str(tmp_path / "s"), "--latency-file", str(tmp_path / "latency.json")]
    assert speed.main(args + ["--skip", "AR,HF assisted", "--copies-only", "--mag-copy", "8"]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "s" / "speed.json").read_text())["runs"][0]["rows"]}
    assert "AR" not in rows and not any(m.startswith("HF assisted") for m in rows)
    assert {"HF greedy", "CSD", "CSD (MaG copies only)", "HF prompt lookup(10)", "CSD (MaG copies up to 8)"} <= set(rows)
    assert rows["CSD (MaG copies only)"]["identical"] == 1 and rows["CSD (MaG copies only)"]["kind"] == "csdlib CSD"
    long_sd = [m for m in rows if m.startswith("SD(MaG copies up to 8) k=")]
    assert len(long_sd) == 1 and rows[long_sd[0]]["identical"] == rows["CSD (MaG copies up to 8)"]["identical"] == 1
    for skip, message in (("HF greedy", "HF greedy is the baseline"), ("ARX", "['ARX'] match no method")):
        with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
            speed.main(args + ["--skip", skip])


def test_skip_is_checked_before_the_latency_model_and_sds_k(tmp_path, monkeypatch):
    import speed

    class Calibrating(Exception):
        pass

    def calibrate_latency(*a, **k):
        raise Calibrating

    monkeypatch.setattr(speed, "calibrate_latency", calibrate_latency)
    args = FAST + ["--prompts", "1", "--out", str(tmp_path / "s"), "--latency-file", str(tmp_path / "latency.json")]
    with pytest.raises(SystemExit, match=r"\['SD\(MaG copies'\] match no method"):
        speed.main(args + ["--skip", "AR,SD(MaG copies"])            # only with --mag-copy
    with pytest.raises(Calibrating):                                 # k not chosen yet: checked once it is
        speed.main(args + ["--skip", "SD(MaG) k=9,tree CSD w9"])


def test_confidence_adds_a_dynamic_draft_length_row_per_threshold(tmp_path, monkeypatch):
    import speed

    seen = []
    real = speed.generate

    def generate(*a, **k):
        seen.append(k["confidence"])
        return real(*a, **k)

    monkeypatch.setattr(speed, "generate", generate)
    args = FAST + ["--prompts", "1", "--out", str(tmp_path / "s"), "--latency-file", str(tmp_path / "latency.json"),
                   "--skip", "AR,SD,HF assisted"]
    assert speed.main(args + ["--confidence", "0.3,0.7"]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "s" / "speed.json").read_text())["runs"][0]["rows"]}
    for c in ("0.3", "0.7"):
        assert rows[f"CSD (confidence={c})"]["identical"] == 1 and rows[f"CSD (confidence={c})"]["kind"] == "csdlib CSD"
    assert {0.3, 0.7, None} <= set(seen)               # the thresholds reach generate; plain CSD has none
    for bad in ("1.5", "0", "x"):
        with pytest.raises(SystemExit):
            speed.parse_args(["--out", "o", "--confidence", bad])
    with pytest.raises(SystemExit):
        speed.parse_args(["--out", "o", "--dataset", "spec-bench", "--categories", "qa,poetry"])


def test_cache_both_adds_static_cache_rows_and_static_runs_every_csdlib_method_on_one(tmp_path):
    import speed

    args = FAST + ["--prompts", "1", "--latency-file", str(tmp_path / "latency.json"), "--skip", "AR,SD,HF assisted"]
    assert speed.main(args + ["--out", str(tmp_path / "both"), "--kv-cache", "both"]) == 0
    run = json.loads((tmp_path / "both" / "speed.json").read_text())["runs"][0]
    rows = {r["method"]: r for r in run["rows"]}
    assert run["cache"] == "dynamic"
    for name in ("HF greedy (static cache)", "CSD (static cache)"):
        assert rows[name]["identical"] == 1 and rows[name]["kind"] == "static" and rows[name].get("predicted s") is None
    assert speed.main(args + ["--out", str(tmp_path / "static"), "--kv-cache", "static"]) == 0
    run = json.loads((tmp_path / "static" / "speed.json").read_text())["runs"][0]
    assert run["cache"] == "static" and "static KV caches" in (tmp_path / "static" / "speed.md").read_text()
    assert {r["method"]: r["identical"] for r in run["rows"]}["CSD"] == 1


def test_the_second_turn_is_prompted_with_greedys_own_answer():
    import speed

    class Fam:
        def encode_turns(self, turns, answers):
            return [len(turns), *[len(a) for a in answers]]

        def prompt_ids(self, q):
            return [0]

    seen = []
    methods = {"HF greedy": ("hf", lambda p: (seen.append(p) or [7, 7, 7], None))}
    item = {"group": "Multi-turn Conversation", "turns": ["a", "b"]}
    rows = speed.run_interleaved(methods, [item], speed.encoder(Fam(), "spec-bench"), lambda ids: "x" * len(ids),
                                 target=None, device=torch.device("cpu"), warmup=0, log=lambda *a: None)
    assert seen == [[1], [2, 3]]                     # turn 2: two turns, and the answer "xxx" to the first
    assert [t["turn"] for t in rows["HF greedy"]["turns"]] == [1, 2]


def test_also_family_adds_a_row_with_another_familys_drafters_for_the_same_target(tmp_path):
    """`--also-family`: a `CSD (NAME)` row whose drafters (renamed NAME:...) draft for this run's target,
    audited like every row; a family with another target is refused."""
    import speed

    args = FAST + ["--prompts", "1", "--out", str(tmp_path / "s"), "--latency-file", str(tmp_path / "latency.json"),
                   "--skip", "AR,HF assisted,SD"]
    assert speed.main(args + ["--also-family", "gsm8k-tiny"]) == 0
    run = json.loads((tmp_path / "s" / "speed.json").read_text())["runs"][0]
    rows = {r["method"]: r for r in run["rows"]}
    assert rows["CSD (gsm8k-tiny)"]["identical"] == 1 and rows["CSD (gsm8k-tiny)"]["kind"] == "csdlib CSD"
    assert rows["CSD (gsm8k-tiny)"]["tokens/target call"] == rows["CSD"]["tokens/target call"]   # the same drafters
    with pytest.raises(SystemExit, match="--also-family gsm8k-base: its target is not gsm8k-tiny's"):
        speed.main(args + ["--also-family", "gsm8k-base"])
