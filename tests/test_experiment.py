"""The runner (csdlib.experiment) and the target-output cache (csdlib.cache) on tiny models."""

import random

import pytest
import tiny

import csdlib
from csdlib import BigramTable, HFModel, MaG
from csdlib.cache import CachedTarget, build_target_cache
from csdlib.errors import CSDValueError
from csdlib.experiment import Method, run, standard_methods, summarize
from csdlib.records import load_results, merge_shards, read_records, shard_path

K = [[2, 3, 2], [0, 1, 2], [0, 0, 2]]


def family(eos=None):
    target = HFModel(tiny.llama(0, eos=eos), name="target")
    mid = HFModel(tiny.perturbed(target.model, 0.01, 1), name="mid")
    small = HFModel(tiny.perturbed(target.model, 0.03, 2), name="small")
    return target, [mid, small]


def prompts(n=3, seed=0):
    rng = random.Random(seed)
    return [(f"s{i}", [rng.randrange(tiny.VOCAB) for _ in range(rng.randrange(2, 12))]) for i in range(n)]


def mag_for(ps):
    return MaG(BigramTable.from_sequences([p for _, p in ps], tiny.VOCAB), k=4)


@pytest.fixture(scope="module")
def setup():
    target, drafters = family()
    ps = prompts()
    return target, drafters + [mag_for(ps)], ps


def test_run_records_and_summary(setup, tmp_path):
    target, drafters, ps = setup
    methods = standard_methods(drafters, k_matrix=K, lenience=2)
    assert [m.name for m in methods] == ["AR", "SD(mid)", "SD(small)", "SD(MaG)", "CSD"]
    out = tmp_path / "r.jsonl"
    df = run(target, methods, ps, out=out, max_new_tokens=10, progress=False)
    assert len(df) == len(read_records(out)) == 15
    assert df["equals_ar"].tolist() == [True] * 15 and df["exact"].tolist() == ["identical"] * 15
    assert (df[df.method == "AR"]["swi.parameters"] == 1.0).all()
    ar = df[df.method == "AR"].set_index("sample_id")
    for _, r in df.iterrows():
        assert r["token_ids"] == ar.loc[r["sample_id"], "token_ids"]
        assert r["new_tokens"] == 10
        assert r["cost.parameters"] == sum(r[f"calls.{m}"] * target.cost if m != "mag" else 0
                                           for m in r["models"])   # drafters have the target's size
    s = summarize(df)
    assert list(s.index) == ["AR", "SD(mid)", "SD(small)", "SD(MaG)", "CSD"]
    assert (s["identical"] == s["samples"]).all() and (s["tie"] == 0).all() and (s["WRONG"] == 0).all()
    assert s.loc["AR", "SWI parameters"] == 1.0 and s.loc["AR", "wall speedup"] == 1.0
    csd = df[df.method == "CSD"]
    assert s.loc["CSD", "SWI parameters"] == (csd["new_tokens"] * target.cost).sum() / csd["cost.parameters"].sum()
    assert s.loc["CSD", "tokens/target call"] == 30 / csd["calls.target"].sum()
    assert s.loc["CSD", "acceptance per level"].count("/") == 2


def test_rerun_resumes_and_repeats_nothing(setup, tmp_path):
    target, drafters, ps = setup
    methods = standard_methods(drafters, k_matrix=K)
    out = tmp_path / "r.jsonl"
    run(target, methods, ps[:2], out=out, max_new_tokens=6, progress=False)
    first = read_records(out)
    seen = []
    df = run(target, methods, ps, out=out, max_new_tokens=6, progress=False, on_record=seen.append)
    assert len(seen) == 5                                      # only the new sample ran
    assert {r["sample_id"] for r in seen} == {"s2"}
    assert read_records(out)[:10] == first and len(df) == 15
    # another max_new_tokens is another configuration
    run(target, methods[:1], ps[:1], out=out, max_new_tokens=5, progress=False, on_record=seen.append)
    assert len(seen) == 6


def test_interrupt_loses_nothing_and_repeats_nothing(setup, tmp_path):
    target, drafters, ps = setup
    methods = standard_methods(drafters, k_matrix=K, lenience=2)
    out = tmp_path / "r.jsonl"
    count = []

    def stop_after_two(record):
        count.append(record["key"])
        if len(count) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(target, methods, ps, out=out, max_new_tokens=8, progress=False, on_record=stop_after_two)
    assert [r["key"] for r in read_records(out)] == count
    rerun = []
    run(target, methods, ps, out=out, max_new_tokens=8, progress=False, on_record=rerun.append)
    keys = [r["key"] for r in read_records(out)]
    assert len(keys) == len(set(keys)) == 15
    assert keys[:2] == count and not set(count) & {r["key"] for r in rerun}


def test_torn_last_line_is_ignored_and_cut(setup, tmp_path):
    target, drafters, ps = setup
    methods = [Method("AR"), Method("SD", drafters[-1:], [[4]])]
    out = tmp_path / "r.jsonl"
    run(target, methods, ps[:1], out=out, max_new_tokens=5, progress=False)
    whole = out.read_text()
    out.write_text(whole + whole.splitlines()[0][:40])        # a crash in the middle of a write
    assert len(read_records(out)) == 2
    run(target, methods, ps[:2], out=out, max_new_tokens=5, progress=False)
    assert len(read_records(out)) == 4 and out.read_text().startswith(whole)
    out.write_text("{not json\n" + whole)
    with pytest.raises(CSDValueError, match="line 1 is not valid JSON"):
        read_records(out)


def test_shards_merge_without_duplicates(setup, tmp_path):
    target, drafters, ps = setup
    methods = [Method("AR"), Method("CSD", drafters, K, 2)]
    out = tmp_path / "r.jsonl"
    run(target, methods, ps[:2], out=shard_path(out, 0), read_from=out, max_new_tokens=5, progress=False)
    run(target, methods, ps[1:], out=shard_path(out, 1), read_from=out, max_new_tokens=5, progress=False)
    assert len(load_results(out)) == 6                           # s1 ran in both shards: one record kept
    assert merge_shards(out) == 6
    assert not shard_path(out, 0).exists() and len(read_records(out)) == 6


@pytest.mark.parametrize("eos_at", [None, 5])
def test_cached_target_gives_identical_results(tmp_path, eos_at):
    ps = prompts(4, seed=1)
    eos = None
    if eos_at is not None:                                     # a token the target emits mid-output
        plain, _ = family()
        eos = csdlib.generate(plain, [], ps[0][1], max_new_tokens=eos_at + 1).new_tokens[eos_at]
    target, drafters = family(eos)
    drafters.append(mag_for(ps))
    methods = standard_methods(drafters, k_matrix=K, lenience=2)
    real = run(target, methods, ps, max_new_tokens=12, progress=False)
    cached = build_target_cache(target, [p for _, p in ps], 12, tmp_path / "cache.jsonl")
    replay = run(cached, methods, ps, max_new_tokens=12, progress=False)
    if eos_at is not None:
        assert real["new_tokens"].min() < 12                    # some outputs did stop at EOS
    cols = ["method", "sample_id", "token_ids", "new_tokens", "levels"] + \
        [c for c in real.columns if c.startswith("calls.")]
    assert real[cols].fillna(-1).to_dict("records") == replay[cols].fillna(-1).to_dict("records")
    assert (replay["target_mode"] == "cached").all() and replay["equals_ar"].all()


def test_cache_guards(tmp_path):
    target, drafters = family()
    ps = prompts(2)
    path = tmp_path / "cache.jsonl"
    cached = build_target_cache(target, [ps[0][1]], 6, path)
    other = HFModel(tiny.llama(7), name="target")
    with pytest.raises(CSDValueError, match="not of the given target"):
        CachedTarget.load(path, expect=other)
    with pytest.raises(CSDValueError, match="not of the given target"):
        build_target_cache(other, [ps[0][1]], 6, path)
    assert CachedTarget.load(path, expect=target).entries == cached.entries
    with pytest.raises(CSDValueError, match="holds no output for this prompt"):
        csdlib.generate(cached, [], ps[1][1], max_new_tokens=3)
    with pytest.raises(CSDValueError, match="holds 6 tokens"):
        csdlib.generate(cached, [], ps[0][1], max_new_tokens=7)
    cached.start(ps[0][1])
    wrong = (cached.entries[next(iter(cached.entries))][0] + 1) % tiny.VOCAB
    with pytest.raises(CSDValueError, match="can only be the cascade's target"):
        cached.logits(ps[0][1] + [wrong], 1)
    # cache grows for new prompts without recomputing old ones
    lines = path.read_text().count("\n")
    build_target_cache(target, [ps[0][1], ps[1][1]], 6, path)
    assert path.read_text().count("\n") == lines + 1


def test_prediction_matches_measurement_when_everything_is_accepted(setup):
    import copy

    target, _, ps = setup
    twin = HFModel(copy.deepcopy(target.model), name="twin", cost=target.cost / 4)   # alpha = 1, c = 1/4
    df = run(target, [Method("AR"), Method("SD(twin)", [twin], [[4]])], ps, max_new_tokens=20, progress=False)
    s = summarize(df)
    assert s.loc["SD(twin)", "alpha (target)"] == 1.0
    assert s.loc["SD(twin)", "tokens/target call"] == 5.0
    assert s.loc["SD(twin)", "predicted SWI"] == s.loc["SD(twin)", "SWI parameters"] == 5 / (4 / 4 + 1)


def test_measured_costs(setup):
    from csdlib.cost import measure_costs

    target, drafters, ps = setup
    costs = measure_costs([target, *drafters], ps[0][1], warmup=1, repeats=3)
    assert list(costs) == ["target", "mid", "small", "mag"]
    assert costs["mag"] == 0.0 and all(costs[n] > 0 for n in ("target", "mid", "small"))
    assert target.calls == 1 + 1 + 3                           # fill the cache, warm-up, timed


def test_committed_records_still_read_and_summarize():
    """Records written before tokens_fed / one_token_calls / switch_calls existed (data/results/reference)."""
    from pathlib import Path

    from csdlib.experiment import stats_of

    df = load_results(Path(__file__).resolve().parent.parent / "data/results/reference/gsm8k-dev-n100-t128.jsonl")
    csd = df[df["method"] == "CSD"]
    total = stats_of(csd)
    assert total.calls["target"] == csd["calls.target"].sum() and total.new_tokens == csd["new_tokens"].sum()
    assert total.tokens_fed == {} and total.levels[0].drafted > 0
    s = summarize(df)
    assert s.loc["CSD", "tokens/target call"] == total.new_tokens / total.calls["target"]


def test_a_broken_method_is_wrong_in_records_and_summary(setup, monkeypatch):
    """The audit in the runner: a verifier that accepts every draft gives WRONG outputs, counted in the
    summary and listed by `divergences` with their margins."""
    from csdlib.cascade import Cascade
    from csdlib.experiment import divergences

    def accept_all(self, i, seq, q, start):
        self.reviews.append((i, start, len(seq) - start, len(seq) - start, None))
        return seq + [int(self.models[i].logits(seq, 1)[0].argmax())], q + [1.0] * (len(seq) - len(q) + 1)

    target, drafters, ps = setup
    random_drafter = HFModel(tiny.llama(99, hidden=16, layers=1), name="random")
    methods = [Method("AR", []), Method("broken SD", [random_drafter], [[4]])]
    monkeypatch.setattr(Cascade, "review_greedy", accept_all)     # AR (nothing drafted) stays exact
    df = run(target, methods, ps, max_new_tokens=16, progress=False)
    s = summarize(df)
    assert s.loc["AR", "identical"] == len(ps) and s.loc["broken SD", "WRONG"] == len(ps)
    wrong = divergences(df)
    assert len(wrong) == len(ps) and (wrong["exact"] == "WRONG").all() and (wrong["exact_margin"] > 0).all()


def test_records_from_before_the_audit_read_as_identical_or_wrong():
    import pandas as pd

    from csdlib.experiment import verdicts

    old = pd.DataFrame({"equals_ar": [True, False, None]})
    assert verdicts(old).tolist() == ["identical", "WRONG"]
