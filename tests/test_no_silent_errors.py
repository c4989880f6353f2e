"""Each way the workbench used to return a wrong answer without a word (issue 11), now either right or a
clear error naming the argument. Every test here failed on the code before the fix."""

import json
import shutil

import pytest
import torch
import tiny

import csdlib
from csdlib import BigramTable, HFModel, MaG
from csdlib import experiment, records
from csdlib.cache import build_target_cache
from csdlib.protocol import fingerprint
from csdlib.errors import CSDValueError, MissingFileError
from csdlib.experiment import Method, run, standard_methods, summarize
from csdlib.records import read_records

K = [[2, 2], [0, 2]]


@pytest.fixture(scope="module")
def fam():
    target = HFModel(tiny.llama(0), name="target")
    mid = HFModel(tiny.perturbed(target.model, 0.02, 1), name="mid")
    mag = MaG(BigramTable.from_sequences([[1, 2, 3, 4, 5, 6]], tiny.VOCAB), k=3)
    return target, [mid, mag]


# ---------------------------------------------------------------- records are keyed by all that determines them


def test_another_prompt_under_the_same_sample_id_is_run_not_reused(fam, tmp_path, capsys):
    target, _ = fam
    out = tmp_path / "r.jsonl"
    a = run(target, [Method("AR")], [("0", [5, 6, 7])], out=out, max_new_tokens=6, progress=False)
    b = run(target, [Method("AR")], [("0", [9, 9, 1, 2])], out=out, max_new_tokens=6, progress=False)
    expected = csdlib.generate(target, [], [9, 9, 1, 2], max_new_tokens=6).new_tokens
    assert b["token_ids"].iloc[0] == expected != a["token_ids"].iloc[0]
    assert b.attrs["reused"] == 0 and len(read_records(out)) == 2
    printed = capsys.readouterr().out
    assert f"0 of 1 records reused from {out}" in printed


def test_split_template_and_max_new_tokens_are_part_of_the_key(fam, tmp_path):
    target, _ = fam
    out, ps = tmp_path / "r.jsonl", [("0", [5, 6, 7])]
    kw = dict(out=out, progress=False, dataset="gsm8k")
    run(target, [Method("AR")], ps, max_new_tokens=6, source={"split": "dev"}, **kw)
    assert run(target, [Method("AR")], ps, max_new_tokens=6, source={"split": "dev"}, **kw).attrs["reused"] == 1
    assert run(target, [Method("AR")], ps, max_new_tokens=6, source={"split": "test"}, **kw).attrs["reused"] == 0
    assert run(target, [Method("AR")], ps, max_new_tokens=6, source={"split": "dev", "template": "Q: {q}"},
               **kw).attrs["reused"] == 0
    assert run(target, [Method("AR")], ps, max_new_tokens=5, source={"split": "dev"}, **kw).attrs["reused"] == 0


def test_fingerprint_sees_every_weight_and_the_generation_config():
    model = tiny.llama(0)
    before = fingerprint(HFModel(model))
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 1] += 1.0          # an element a strided sample skipped
    changed = fingerprint(HFModel(model))
    assert changed != before
    model.generation_config.eos_token_id = 5                  # another EOS: other outputs
    assert fingerprint(HFModel(model)) != changed
    model.generation_config.eos_token_id = None
    model.generation_config.top_k = 7                          # another sampling default
    assert fingerprint(HFModel(model)) != changed


def test_records_measured_elsewhere_are_never_reused(fam, tmp_path, monkeypatch, capsys):
    target, drafters = fam
    out, ps = tmp_path / "r.jsonl", [("0", [5, 6, 7]), ("1", [1, 2])]
    methods = standard_methods(drafters, k_matrix=K)
    first = run(target, methods, ps, out=out, max_new_tokens=5, progress=False)
    assert first.attrs["reused"] == 0
    env = records.environment(target)
    assert {"machine", "device", "threads", "versions"} <= set(env)
    assert read_records(out)[0]["environment"] == env
    assert run(target, methods, ps, out=out, max_new_tokens=5, progress=False).attrs["reused"] == 8
    for other in (dict(env, machine="another machine"), dict(env, threads=env["threads"] + 3),
                  dict(env, versions=dict(env["versions"], torch="0.0"))):
        monkeypatch.setattr(experiment, "environment", lambda target=None, e=other: e)
        again = run(target, methods, ps, out=out, max_new_tokens=5, progress=False)
        assert again.attrs["reused"] == 0 and again.attrs["ran"] == 8
    assert "0 of 8 records reused from" in capsys.readouterr().out


def test_csd_run_measures_on_a_fresh_clone():
    """`csd run` writes where git ignores it, and git tracks nothing there: a fresh clone measures (nothing
    to resume from), and a user's run leaves `git status` clean (the committed references are elsewhere)."""
    import subprocess
    from pathlib import Path

    from csdlib.cli import ROOT, build_parser

    args = build_parser().parse_args(["run"])
    results = Path(args.results_dir)
    default = results / f"{args.dataset}-{args.split}-n{args.n_samples}-t{args.max_new_tokens}.jsonl"
    git = ["git", "-C", str(ROOT)]
    tracked = subprocess.run(git + ["ls-files", "--", str(results)], capture_output=True, text=True, check=True)
    assert tracked.stdout == "", f"git tracks files under {results}: `csd run` would resume from / rewrite them"
    for path in (default, default.with_suffix(".png"), default.with_suffix(".md")):
        ignored = subprocess.run(git + ["check-ignore", "-q", "--no-index", str(path)])
        assert ignored.returncode == 0, f"{path} is not git-ignored: `csd run` would leave `git status` dirty"
    assert args.figures_dir is None                       # the figure goes next to the records


def test_measured_costs_are_measured_once_per_results_file(fam, tmp_path, monkeypatch):
    target, drafters = fam
    out = tmp_path / "r.jsonl"
    first = experiment.measured_costs_for([target, *drafters], [1, 2, 3], out, warmup=0, repeats=2)
    monkeypatch.setattr(experiment.costs_mod, "measure_costs",
                        lambda *a, **k: pytest.fail("measured again"))
    assert experiment.measured_costs_for([target, *drafters], [1, 2, 3], out) == first


# ---------------------------------------------------------------- sampling


def test_sampling_settings_resolve_as_generate_does():
    from csdlib.sampling import resolve_sampling

    model = tiny.llama(0)
    assert resolve_sampling(HFModel(model)) == {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
    model.generation_config.top_k, model.generation_config.temperature = 5, 0.7
    assert resolve_sampling(HFModel(model)) == {"temperature": 0.7, "top_k": 5, "top_p": 1.0}
    assert resolve_sampling(HFModel(model), top_k=0, top_p=0.9) == {"temperature": 0.7, "top_k": 0, "top_p": 0.9}
    model.generation_config.min_p = 0.1
    with pytest.raises(CSDValueError, match="generation_config sets min_p=0.1"):
        csdlib.generate(model, [], [1, 2], max_new_tokens=2, do_sample=True)


def test_default_sampling_never_leaves_the_targets_top_50(fam):
    """Near-uniform tiny models: without transformers' default top_k=50, half the tokens would be outside."""
    target, drafters = fam
    out = csdlib.generate(target, drafters, [5, 6, 7], k_matrix=K, max_new_tokens=40, do_sample=True, seed=0)
    seq = [5, 6, 7] + out.new_tokens
    with torch.no_grad():
        logits = target.model(torch.tensor([seq])).logits[0, 2:-1]
    top50 = logits.topk(50).indices
    assert all(t in top50[i] for i, t in enumerate(out.new_tokens))


def test_cached_target_refuses_to_sample(fam, tmp_path):
    target, drafters = fam
    cached = build_target_cache(target, [[5, 6, 7]], 6, tmp_path / "c.jsonl")
    with pytest.raises(CSDValueError, match="do_sample: target 'target' replays cached greedy outputs"):
        csdlib.generate(cached, drafters, [5, 6, 7], k_matrix=K, max_new_tokens=6, do_sample=True)


# ---------------------------------------------------------------- statistics and summaries


def test_acceptance_stops_at_eos():
    target = tiny.llama(0)
    free = tiny.hf_greedy(target, [4, 5, 6], 12)[0].tolist()[3:]
    at = next(i for i in range(1, 5) if free[i] not in free[:i])      # EOS = the first occurrence at index `at`
    twin = HFModel(tiny.perturbed(target, 0.0, 1), name="twin")       # accepts everything
    out = csdlib.generate(target, [twin], [4, 5, 6], k_matrix=[[6]], max_new_tokens=12, eos_token_id=free[at])
    assert out.new_tokens == free[:at + 1]
    level = out.stats.levels[0]
    assert level.reviews == 1 and level.drafted == level.accepted == at + 1       # not 6: none after EOS
    assert level.drafted_per_position == [1] * (at + 1)


def test_summary_and_cost_table_keep_configurations_apart(fam, tmp_path):
    from csdlib import plots

    target, drafters = fam
    out, ps = tmp_path / "r.jsonl", [("0", [5, 6, 7]), ("1", [1, 2])]
    run(target, [Method("AR"), Method("CSD", drafters, [[1, 0], [0, 1]])], ps, out=out, max_new_tokens=8,
        progress=False)
    run(target, [Method("AR"), Method("CSD", drafters, [[3, 4], [0, 2]])], ps, out=out, max_new_tokens=8,
        progress=False)
    df = records.load_results(out)
    s = summarize(df)
    csd_rows = [m for m in s.index if m.startswith("CSD")]
    assert len(csd_rows) == 2 and len(s) == 3                 # one AR (same context), two CSD configurations
    for label, g in experiment.configurations(df):
        alone = summarize(g)
        if label.startswith("CSD"):
            assert s.loc[label, "SWI parameters"] == alone.iloc[0]["SWI parameters"]
            assert s.loc[label, "acceptance per level"] == alone.iloc[0]["acceptance per level"]
    table = plots.cost_table(df)
    assert sorted(table["method"].unique()) == sorted(s.index)
    for label in csd_rows:
        rows = table[table.method == label]
        g = dict(experiment.configurations(df))[label]
        assert rows.set_index("model")["calls"]["target"] == g["calls.target"].sum()


def test_complete_last_record_without_newline_is_kept(fam, tmp_path):
    target, _ = fam
    out = tmp_path / "r.jsonl"
    run(target, [Method("AR")], [("0", [5, 6, 7]), ("1", [1, 2])], out=out, max_new_tokens=4, progress=False)
    out.write_text(out.read_text().rstrip("\n"))              # e.g. edited by hand, or copied
    assert len(read_records(out)) == 2
    again = run(target, [Method("AR")], [("0", [5, 6, 7]), ("1", [1, 2]), ("2", [3])], out=out,
                max_new_tokens=4, progress=False)
    assert again.attrs["reused"] == 2 and len(read_records(out)) == 3


# ---------------------------------------------------------------- data and the seed's configs


def test_explicit_data_dir_without_the_split_is_an_error(tmp_path, monkeypatch):
    import datasets as hf_datasets

    from csdlib.datasets import load_gsm8k, load_mmlu

    monkeypatch.setattr(hf_datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(MissingFileError, match="data_dir .* was given explicitly.*CSD_DATA_DIR"):
        load_gsm8k("test", data_dir=tmp_path)
    with pytest.raises(MissingFileError, match="MMLU split 'test' not found"):
        load_mmlu("test", data_dir=tmp_path)
    monkeypatch.setenv("CSD_DATA_DIR", str(tmp_path))
    with pytest.raises(MissingFileError, match="CSD_DATA_DIR .* was given explicitly"):
        load_gsm8k("test")


def test_offline_without_data_fails_at_once_with_one_message(tmp_path, monkeypatch, capsys):
    import datasets as hf_datasets

    from csdlib import datasets as ds
    from csdlib.cli import main

    monkeypatch.setattr(hf_datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    monkeypatch.setattr(ds, "_REPO_ROOT", tmp_path / "clone")   # no ../shared/datasets next to it
    monkeypatch.delenv("CSD_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingFileError, match=r"HF_HUB_OFFLINE is set\. Fix: pass data_dir= \(csd: --data-dir"):
        ds.load_gsm8k("dev")
    assert main(["run", "--n-samples", "1", "--results-dir", str(tmp_path), "--no-figure", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csd run: error: GSM8K split 'dev' not found") and "Traceback" not in err
    assert err.count("\n") == 1                                # one message, before any model is loaded
    assert "CSD_DATA_DIR" in err and "--data-dir" in err


def test_seed_config_refuses_a_prompt_longer_than_the_tokenizer_allows(tmp_path):
    import seedfixtures as sf
    from transformers import AutoTokenizer

    paths = sf.write_models(tmp_path / "models")
    short = tmp_path / "short"
    shutil.copytree(paths["llama_7b"], short)
    tok = AutoTokenizer.from_pretrained(short)
    tok.model_max_length = 8
    tok.save_pretrained(short)
    paths["llama_7b"] = short
    with pytest.raises(CSDValueError, match=r"config\['dataset'\]: prompt 0 of 'gsm8k' has \d+ tokens, more than "
                                            r"the tokenizer's model_max_length of 8"):
        csdlib.run_config(sf.LLAMA_GSM8K, model_paths=paths, bigram_path=sf.write_bigram(tmp_path / "b.json"),
                          data_dir=sf.write_data(tmp_path / "data"), n_samples=2, progress=False)
