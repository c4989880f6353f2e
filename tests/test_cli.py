"""`csd run` on tiny stand-in models (not the trained family): one process, then two sharded ones."""

import json
import os
import subprocess
import sys

import pytest
import seedfixtures as sf

from csdlib.cli import main
from csdlib.records import read_records


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    paths = sf.write_models(root)
    return root, paths, sf.write_bigram(root / "bigram.json"), sf.write_data(root / "data")


def run_args(world, tmp_path, n=3):
    root, paths, bigram, data = world
    return ["run", "--target", str(paths["llama_7b"]), "--drafter", str(paths["JackFram/llama-160m"]),
            "--bigram", str(bigram), "--k-matrix", "[[4, 4], [0, 4]]", "--lenience", "2", "--data-dir", str(data),
            "--n-samples", str(n), "--max-new-tokens", "10", "--dtype", "float64", "--name", "t",
            "--results-dir", str(tmp_path / "results"), "--figures-dir", str(tmp_path / "figures"), "--quiet"]


def test_csd_run(world, tmp_path, capsys):
    assert main(run_args(world, tmp_path) + ["--device-map", "auto"]) == 0     # accelerate places the target
    printed = capsys.readouterr().out
    methods = ["AR", "SD(JackFram__llama-160m)", "SD(MaG)", "CSD"]
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()[:1] in [[m] for m in methods]}
    assert {m: rows[m][1] for m in methods} == {m: "3" for m in methods}                # samples
    assert "identical / tie of the target's logits / WRONG): identical 12, tie 0, WRONG 0" in printed
    assert not printed.startswith("replay")                                          # measured, not replayed
    records = read_records(tmp_path / "results" / "t.jsonl")
    assert sorted((r["method"], r["sample_id"]) for r in records) == sorted((m, s) for m in methods for s in "012")
    assert all(r["equals_ar"] for r in records)
    assert all(r["load_before"]["cpus"] >= 1 and "load_after" in r and "load_warning" in r for r in records)
    md = (tmp_path / "results" / "t.md").read_text().splitlines()
    assert [c.strip() for c in md[0].split("|")[1:5]] == ["method", "samples", "new_tokens", "SWI measured"]
    assert [c.strip() for c in md[2].split("|")[1:4]] == ["AR", "3", "30"]             # all columns in the file
    assert len({len(line) for line in md if line.startswith("|")}) == 1             # aligned columns
    csv = (tmp_path / "results" / "t.csv").read_text().splitlines()
    numbers = [x for line in csv[1:] for x in line.split(",")[1:] if x.replace(".", "").isdigit()]
    assert numbers and all(len(x.partition(".")[2]) <= 3 for x in numbers)       # rounded to 3 decimals
    assert (tmp_path / "figures" / "t.png").stat().st_size > 0
    # resumed: a rerun with one more prompt runs only that prompt, and its first line says what it replays
    assert main(run_args(world, tmp_path, n=4)) == 0
    first = capsys.readouterr().out.splitlines()[0]
    date = records[0]["finished_at"][:10]
    assert first.startswith(f"replay: 12 of 16 records are from an earlier run, measured {date} ")
    assert records[0]["environment"]["machine"] in first and "--force measures them again" in first
    records = read_records(tmp_path / "results" / "t.jsonl")
    assert len(records) == 16 and {r["sample_id"] for r in records[12:]} == {"3"}


def test_csd_run_tree_adds_an_exact_tree_csd_row(world, tmp_path, capsys):
    """`--tree W:E:B` adds tree CSD over the target's draft; its outputs are audited like the others."""
    args = run_args(world, tmp_path, n=2) + ["--tree", "3:1:2", "--methods", "AR", "CSD", "tree CSD"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "identical 6, tie 0, WRONG 0" in printed
    records = read_records(tmp_path / "results" / "t.jsonl")
    assert sorted({r["method"] for r in records}) == ["AR", "CSD", "tree CSD"] and all(r["equals_ar"] for r in records)


def test_force_measures_again(world, tmp_path, capsys):
    args = run_args(world, tmp_path, n=2) + ["--methods", "AR", "CSD", "--no-figure"]
    assert main(args) == 0
    before = read_records(tmp_path / "results" / "t.jsonl")
    assert main(args) == 0
    assert capsys.readouterr().out.count("replay: 4 of 4 records") == 1
    assert read_records(tmp_path / "results" / "t.jsonl") == before                 # replayed: nothing new
    assert main(args + ["--force"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("--force: 4 earlier records set aside") and "replay" not in printed
    again = read_records(tmp_path / "results" / "t.jsonl")
    assert len(again) == 4 and {r["run_id"] for r in again}.isdisjoint({r["run_id"] for r in before})
    kept = [p for p in (tmp_path / "results").iterdir() if ".before-" in p.name]
    assert sorted(p.name.split(".before-")[0] for p in kept) == ["t.costs.json", "t.jsonl"]


def test_busy_machine_is_warned_about_and_kept_in_the_records(world, tmp_path, capsys, monkeypatch):
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (5.0 + os.cpu_count(), 0.0, 0.0))
    assert main(run_args(world, tmp_path, n=1) + ["--methods", "AR", "--no-figure"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("warning: the machine was busy before the run")
    assert printed.count("wall-clock figures (wall speedup, tokens/s, SWI measured) are unreliable") == 2
    (record,) = read_records(tmp_path / "results" / "t.jsonl")
    assert record["load_warning"].startswith("warning: the machine was busy before the run")
    assert record["load_after"]["others"] >= 5
    assert "unreliable" in (tmp_path / "results" / "t.md").read_text()


def test_sharded_across_two_processes(world, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "csdlib.cli", *run_args(world, tmp_path, n=4), "--no-figure"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    out = tmp_path / "results"
    assert sorted(p.name for p in out.iterdir()) == ["t.costs.json", "t.csv", "t.jsonl", "t.md"]   # shards merged
    assert len(json.loads((out / "t.costs.json").read_text())) == 1       # one cost basis for both shards
    records = read_records(out / "t.jsonl")
    assert len(records) == 16 and len({r["key"] for r in records}) == 16
    by_process = {}
    for r in records:
        by_process.setdefault(r["process_index"], set()).add(r["sample_id"])
    assert sorted(by_process) == [0, 1] and by_process[0].isdisjoint(by_process[1])
    assert by_process[0] | by_process[1] == {"0", "1", "2", "3"}
    assert all(r["equals_ar"] and r["num_processes"] == 2 for r in records)
    assert json.loads(json.dumps(records[0]))["dataset"] == "gsm8k"


def test_default_family_path(world, tmp_path, monkeypatch, capsys):
    """With no model flags `csd run` uses csdlib.zoo.load() (replaced here by tiny stand-ins)."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from csdlib import HFModel, zoo
    from csdlib.compat import get_mag_model

    root, paths, bigram, data = world
    tok = AutoTokenizer.from_pretrained(paths["llama_7b"])
    family = SimpleNamespace(
        tokenizer=tok, chat=False, encode=lambda text: tok(text)["input_ids"],
        target=HFModel(AutoModelForCausalLM.from_pretrained(paths["llama_7b"]), name="target"),
        drafters=[HFModel(AutoModelForCausalLM.from_pretrained(paths["JackFram/llama-160m"]), name="mid"),
                  get_mag_model(bigram)],
        k_matrix=[[3, 4], [0, 4]], lenience=2.0)
    asked = []
    monkeypatch.setattr(zoo, "load", lambda *a, **k: asked.append(a) or family, raising=False)
    args = ["run", "--data-dir", str(data), "--n-samples", "2", "--max-new-tokens", "6", "--quiet", "--no-figure",
            "--results-dir", str(tmp_path)]
    assert main(args + ["--family", "gsm8k-base", "--methods", "AR"]) == 0
    assert asked == [("gsm8k-base",)]                       # --family names the embedded family
    capsys.readouterr()
    assert main(args) == 0
    assert asked[-1] == (None,)                             # none named: zoo.DEFAULT_FAMILY
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("method "))
    assert [line.split()[0] for line in lines[top + 3:top + 7]] == ["AR", "SD(mid)", "SD(MaG)", "CSD"]
    assert lines[top + 7] == ""
    csd = [r for r in read_records(tmp_path / "gsm8k-dev-n2-t6.jsonl") if r["method"] == "CSD"]
    assert csd[0]["k_matrix"] == [[3, 4], [0, 4]] and csd[0]["lenience"] == 2.0


def test_nothing_compared_is_not_reported_as_equal(world, tmp_path, capsys):
    assert main(run_args(world, tmp_path, n=2) + ["--methods", "CSD", "--no-figure", "--wide"]) == 0
    printed = capsys.readouterr().out
    assert "audit of every output" not in printed
    assert "outputs not compared with AR's" in printed
    assert any(line.split()[:3] == ["CSD", "2", "20"] for line in printed.splitlines())


def test_terminal_table_is_aligned_and_rounded():
    import pandas as pd

    from csdlib.commands import table

    summary = pd.DataFrame({"samples": [2, 2], "SWI parameters": [1.0, 2.0565919282361795],
                            "acceptance per level": ["-", "0.16 / 0.65"], "alpha (target)": [None, 0.6646981],
                            "equals AR": [True, False]}, index=pd.Index(["AR", "CSD"], name="method"))
    lines = table(summary).splitlines()
    assert lines[0].split() == ["method", "samples", "SWI", "acceptance", "alpha", "equals"]    # two-line headers
    assert lines[1].split() == ["parameters", "per", "level", "(target)", "AR"]
    assert lines[3].split() == ["AR", "2", "1.00", "-", "-", "yes"]
    assert lines[4].split() == ["CSD", "2", "2.06", "0.16/0.65", "0.66", "no"]              # acceptance narrowed
    assert set(lines[2]) == {"-", " "}                                           # the rule under the headers
    assert lines[3].index("1.00") == lines[4].index("2.06")                     # numbers right-aligned
    assert lines[3].index("yes") == lines[4].index("no")                        # text left-aligned


def test_help_imports_no_heavy_library():
    """`csd --help` answers without importing torch, transformers, pandas or numpy (it took 3.4 s)."""
    code = ("import runpy, sys\n"
            "sys.argv = ['csd', 'run', '--help']\n"
            "try:\n    runpy.run_module('csdlib.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'pandas', 'numpy'}))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--n-samples" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"


def test_loading_shows_no_progress_bar(capfd):
    """transformers' "Loading weights" bar is off while csdlib loads models, and its setting is restored."""
    from transformers.utils import logging as hf_logging

    from csdlib import zoo

    hf_logging.enable_progress_bar()
    zoo.load()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


def test_the_real_targets_command_suits_the_cpu(monkeypatch):
    """csd run ends with the real target's command: bfloat16 only on a CPU with bf16 units."""
    from csdlib import precision, run_report

    for isa, dtype in [("AMX-BF16", "bfloat16"), ("AVX512-BF16", "bfloat16"), ("neither", "float32"),
                       ("unknown", "float32")]:
        monkeypatch.setattr(precision, "cpu_isa", lambda isa=isa: isa)
        assert run_report.smollm2_run() == f"csd run --family smollm2 --dtype {dtype} --n-samples 20"
