"""`csd run --dataset spec-bench` on tiny stand-in models: both MT-bench turns (the second after AR's own
answer), Spec-Bench's layout per group, prompts that do not fit refused before measuring; and the helpers
it shares with benchmarks/speed.py (`datasets.spread`, `experiment.by_group`)."""

import json
import re

import pandas as pd
import pytest
import seedfixtures as sf

from csdlib import zoo
from csdlib.cache import prompt_key
from csdlib.cli import main
from csdlib.datasets import SPEC_BENCH_GROUPS, spread
from csdlib.errors import CSDValueError
from csdlib.experiment import by_group
from csdlib.records import read_records


def test_spread_every_prefix_covers_the_groups_and_each_groups_range():
    items = [{"group": g, "i": i} for g, n in (("A", 8), ("B", 8), ("C", 3)) for i in range(n)]
    order = spread(items)
    assert sorted(map(str, order)) == sorted(map(str, items))                      # a permutation
    assert [x["group"] for x in order[:9]] == ["A", "B", "C"] * 3                   # round-robin
    assert [x["i"] for x in order if x["group"] == "A"] == [0, 4, 2, 6, 1, 5, 3, 7]  # bit-reversed
    assert [x["group"] for x in order[9:]] == ["A", "B"] * 5                        # C ran out


def test_by_group_is_a_ratio_of_summed_throughputs_on_the_same_prompts():
    rows = [("base", 0, "X", 4.0, 10, None), ("base", 1, "X", 2.0, 10, None), ("base", 2, "Y", 3.0, 5, None),
            ("fast", 0, "X", 1.0, 10, 4), ("fast", 1, "X", 2.0, 10, 6), ("fast", 2, "Y", 3.0, 5, 5),
            ("hf", 0, "X", 3.0, 10, None), ("hf", 2, "Y", 1.0, 5, None),
            ("long", 0, "X", 8.0, 40, 8), ("long", 1, "X", 2.0, 10, 10), ("long", 2, "Y", 3.0, 5, 5)]
    turns = pd.DataFrame(rows, columns=["method", "sample_id", "group", "wall_s", "new_tokens", "target_calls"])
    got = by_group(turns, "base")
    assert list(got.columns) == ["X", "Y", "Overall", "mean accepted tokens"]
    assert got.loc["fast"].tolist() == pytest.approx([6 / 3, 1.0, 9 / 6, 25 / 15])   # same outputs: wall times
    assert got.loc["hf", "X"] == pytest.approx(4 / 3) and got.loc["hf", "Overall"] == pytest.approx(7 / 4)  # its prompts
    assert got.loc["long", "X"] == pytest.approx((50 / 10) / (20 / 6))   # a longer output: tokens per second
    assert pd.isna(got.loc["hf", "mean accepted tokens"]) and got.loc["base", "Overall"] == 1.0
    with pytest.raises(CSDValueError, match="no 'AR' rows"):
        by_group(turns, "AR")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("specbench")
    paths = sf.write_models(root)
    data = root / "data"
    rows, qid = [], 0
    for group, cats in SPEC_BENCH_GROUPS.items():
        for cat in cats:
            qid += 1
            turns = ([f"Tell me about {cat}.", "Now shorter."] if group == "Multi-turn Conversation" else
                     ["word " * 700 + "Summarize."] if group == "Summarization" else [f"What is {cat} number {qid}?"])
            rows.append({"question_id": qid, "category": cat, "turns": turns})
    (data / "spec_bench").mkdir(parents=True)
    (data / "spec_bench" / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths, sf.write_bigram(root / "bigram.json"), data, rows


def spec_args(world, tmp_path, categories="mt-bench,qa", n=2):
    paths, bigram, data, _ = world
    return ["run", "--target", str(paths["llama_7b"]), "--drafter", str(paths["JackFram/llama-160m"]),
            "--bigram", str(bigram), "--k-matrix", "[[4, 4], [0, 4]]", "--data-dir", str(data),
            "--dataset", "spec-bench", "--categories", categories, "--n-samples", str(n), "--max-new-tokens", "10",
            "--dtype", "float64", "--name", "sb", "--results-dir", str(tmp_path), "--quiet"]


def test_both_turns_measured_and_the_table_per_group(world, tmp_path, capsys):
    paths, bigram, _, rows = world
    assert main(spec_args(world, tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "identical 20, tie 0, WRONG 0" in printed                     # 4 methods x 5 prompts (2 MT-bench questions x 2 turns, 1 QA)
    records = read_records(tmp_path / "sb.jsonl")
    mt = [r["question_id"] for r in rows if len(r["turns"]) == 2][::4][:2]  # evenly spaced: 1st and 5th of 8
    qa = [r["question_id"] for r in rows if r["category"] == "qa"]
    want = {f"{q}.1" for q in mt + qa} | {f"{q}.2" for q in mt}
    assert {r["sample_id"] for r in records} == want and len(records) == 4 * len(want)
    # a second turn's prompt: the first question, AR's own answer to it, the second question
    fam = zoo.from_paths(paths["llama_7b"], [paths["JackFram/llama-160m"]], bigram=bigram, k_matrix=[[4, 4], [0, 4]],
                         dtype="float64")
    ar = {r["sample_id"]: r for r in records if r["method"] == "AR"}
    turns = {r["question_id"]: r["turns"] for r in rows}
    for q in mt:
        expected = fam.encode_turns(turns[q], [fam.decode(ar[f"{q}.1"]["token_ids"])])
        assert ar[f"{q}.2"]["prompt_key"] == f"{q}.2:{prompt_key(expected)}"
    groups = (tmp_path / "sb-groups.md").read_text().splitlines()
    assert [c.strip() for c in groups[0].split("|")[1:-1]] == ["method", "Multi-turn Conversation", "QA", "Overall",
                                                                "mean accepted tokens"]
    assert [c.strip() for c in groups[2].split("|")[1:-1]] == ["AR", "1.00", "1.00", "1.00", "1.00"]
    assert (tmp_path / "sb-groups.png").stat().st_size > 0 and "Spec-Bench's layout" in printed


def test_prompts_too_long_for_the_models_are_refused_before_measuring(world, tmp_path, capsys):
    assert main(spec_args(world, tmp_path, categories="summarization", n=1)) == 2
    assert re.match(r"csd run: error: 1 of 1 prompts \(e\.g\. \d+\.1\) need more than the 512 positions .*"
                    r"--family smollm2-general\)$", capsys.readouterr().err.strip())
    assert not (tmp_path / "sb.jsonl").exists()


def test_the_family_made_for_spec_bench_runs_unless_another_is_named(world, tmp_path, monkeypatch, capsys):
    """No --family: smollm2-general, the family made for general text, checked against and loaded, and the
    run's first line says so; --family names another, --target brings its own models."""
    from csdlib import cli, flags

    _, _, data, _ = world
    loaded = []

    class Loaded(Exception):
        pass

    def load(name=None, **kw):
        loaded.append(name)
        raise Loaded                              # nothing is measured: which family loads is the point
    monkeypatch.setattr(zoo, "load", load)
    argv = ["run", "--dataset", "spec-bench", "--categories", "qa", "--n-samples", "1", "--data-dir", str(data),
            "--results-dir", str(tmp_path), "--quiet", "--no-figure"]
    with pytest.raises(Loaded):
        main(argv)
    assert loaded == ["smollm2-general"]
    assert capsys.readouterr().out.splitlines()[0] == ("--dataset spec-bench: the smollm2-general family, made for "
                                                       "general text (--family or --target chooses another)")
    with pytest.raises(Loaded):
        main(argv + ["--family", "smollm2"])
    assert loaded == ["smollm2-general", "smollm2"] and "--dataset spec-bench: the" not in capsys.readouterr().out
    parse = cli.build_parser().parse_args
    assert flags.run_family(parse(argv)) == flags.SPEC_BENCH_FAMILY == "smollm2-general"    # what the flags check
    assert flags.run_family(parse(argv[:1] + ["--n-samples", "1"])) is None                 # GSM8K: zoo's default
    assert flags.run_family(parse(argv + ["--target", "x"])) is None
    run = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["run"]
    assert "with --dataset spec-bench: smollm2-general, the family made for general text" in " ".join(
        run.format_help().split())


def test_bad_flags(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(spec_args(world, tmp_path, categories="poetry"))
    assert e.value.code == 2 and "--categories: unknown ['poetry']" in capsys.readouterr().err
    args = spec_args(world, tmp_path)
    args[args.index("spec-bench")] = "gsm8k"
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "--categories: only with --dataset spec-bench" in capsys.readouterr().err
    assert main(spec_args(world, tmp_path) + ["--methods", "CSD"]) == 2
    assert "second turn is prompted with AR's answer to the first; keep AR in --methods" in capsys.readouterr().err
