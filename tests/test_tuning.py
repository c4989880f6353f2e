"""csdlib.tuning (the k-matrix sliders' function) and csdlib.plots, on tiny models."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import tiny
from csdlib import BigramTable, HFModel, MaG, generate, plots
from csdlib.cache import build_target_cache
from csdlib.cost import parameter_costs, swi
from csdlib.experiment import run, standard_methods, summarize
from csdlib.tuning import BestSoFar, evaluate_cascade

K = [[2, 3], [0, 2]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    target = HFModel(tiny.llama(0), name="target")
    mid = HFModel(tiny.perturbed(target.model, 0.02, 1), name="mid")
    mag = MaG(BigramTable.from_sequences([list(range(20)) * 3], vocab_size=target.vocab_size), k=3)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, target.vocab_size, (n,), generator=g).tolist() for n in (5, 9, 3)]
    return target, [mid, mag], prompts, tmp_path_factory.mktemp("tuning")


def test_evaluate_cascade_matches_generate(setup):
    target, drafters, prompts, _ = setup
    r = evaluate_cascade(target, drafters, prompts, K, 2.0, max_new_tokens=20)
    outs = [generate(target, drafters, p, k_matrix=K, lenience=2.0, max_new_tokens=20) for p in prompts]
    calls = {m: sum(o.stats.calls[m] for o in outs) for m in outs[0].stats.calls}
    tokens = sum(len(o.new_tokens) for o in outs)
    assert r["stats"].calls == calls and r["stats"].new_tokens == tokens == 60
    costs = parameter_costs([target, *drafters])
    assert r["swi"]["parameters"] == pytest.approx(swi(tokens, calls, costs, "target"))
    drafted = sum(o.stats.levels[0].drafted for o in outs)
    accepted = sum(o.stats.levels[0].accepted for o in outs)
    assert r["acceptance"][0] == pytest.approx(accepted / drafted)
    assert len(r["acceptance"]) == 2 and r["tokens_per_target_call"] == tokens / calls["target"]
    assert r["k_matrix"] == K and r["lenience"] == 2.0


def test_evaluate_cascade_cached_equals_real(setup):
    target, drafters, prompts, tmp = setup
    cached = build_target_cache(target, prompts, 20, tmp / "cache.jsonl")
    real = evaluate_cascade(target, drafters, prompts, K, 1.0, max_new_tokens=20)
    fast = evaluate_cascade(cached, drafters, prompts, K, 1.0, max_new_tokens=20)
    for key in ("swi", "acceptance", "stats"):
        assert fast[key] == real[key]


def test_evaluate_cascade_custom_costs_and_errors(setup):
    target, drafters, prompts, _ = setup
    r = evaluate_cascade(target, drafters[:1], prompts[:1], [[1]], cost_table={"target": 1, "mid": 0.5},
                         max_new_tokens=5)
    assert set(r["swi"]) == {"parameters", "custom"}
    with pytest.raises(ValueError):
        evaluate_cascade(target, drafters, prompts[:1], [[1]], max_new_tokens=5)       # wrong shape


def test_best_so_far():
    best = BestSoFar()
    assert str(best) == "best so far: -"
    a = {"swi": {"parameters": 1.5}, "k_matrix": [[1]], "lenience": 1.0}
    b = {"swi": {"parameters": 1.2}, "k_matrix": [[2]], "lenience": 1.0}
    assert best.update(a) and not best.update(b)
    assert best.best is a and "1.500" in str(best) and "[[1]]" in str(best)


def test_plots_from_run(setup, tmp_path):
    target, drafters, prompts, _ = setup
    methods = standard_methods(drafters, k_matrix=K, lenience=1.0, sd_k=2)
    df = run(target, methods, list(enumerate(prompts)), max_new_tokens=12, progress=False, warmup=0)
    per_level, per_pos = plots.acceptance_tables(df)
    assert set(per_level["method"]) == {"SD(mid)", "SD(MaG)", "CSD"}
    assert ((per_level["acceptance"] >= 0) & (per_level["acceptance"] <= 1)).all()
    assert (per_pos["accepted"] <= per_pos["drafted"]).all()
    ct = plots.cost_table(df)
    assert ct[ct["method"] == "AR"]["share of AR cost"].tolist() == [1.0]
    csd = ct[ct["method"] == "CSD"]
    assert 1 / csd["share of AR cost"].sum() == pytest.approx(summarize(df).loc["CSD", "SWI parameters"])
    for fn, name in [(plots.acceptance_per_level, "a"), (plots.acceptance_per_position, "b"),
                     (plots.accepted_per_target_call, "c"), (plots.cost_breakdown, "d")]:
        fn(df, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    plots.speedup_bars(summarize(df), tmp_path / "s.png")
    r = evaluate_cascade(target, drafters, prompts[:1], K, max_new_tokens=8)
    plots.tuning_plot(r, [r, r])


def test_stats_merge_sums_calls_tokens_and_positions():
    from csdlib import LevelStats, Stats

    a = Stats(3, {"t": 2, "d": 5}, {"t": 9, "d": 5}, {"t": 0, "d": 0},
              [LevelStats(0, "t", 2, 4, 1, [2, 2], [1])])
    b = Stats(4, {"t": 3, "d": 1, "mag": 2}, {"t": 4, "d": 1, "mag": 0}, {},
              [LevelStats(0, "t", 3, 3, 3, [1, 1, 1], [1, 1, 1]), LevelStats(1, "d", 1, 2, 0, [1, 1], [])])
    m = Stats.merge_all([a, Stats.from_dict(b.to_dict())])
    assert m.new_tokens == 7 and m.calls == {"t": 5, "d": 6, "mag": 2} and m.tokens_fed == {"t": 13, "d": 6, "mag": 0}
    assert m.levels[0] == LevelStats(0, "t", 5, 7, 4, [3, 3, 1], [2, 1, 1])
    assert m.levels[1] == LevelStats(1, "d", 1, 2, 0, [1, 1], []) and m.levels[1].acceptance == 0.0
    assert Stats.from_dict(m.to_dict()) == m


def test_stats_read_older_records_and_frame_rows():
    from csdlib import Stats

    old = {"new_tokens": 5, "models": ["t", "mag"], "calls": {"t": 3, "mag": 2}, "levels": []}   # no tokens_fed yet
    assert Stats.from_dict(old) == Stats(5, {"t": 3, "mag": 2})
    row = {"new_tokens": 5, "models": ["t"], "calls.t": 3.0, "calls.mag": float("nan"), "tokens_fed.t": 4.0,
           "switch_calls.t": float("nan"), "levels": []}                   # a frame row: flattened dicts
    assert Stats.from_dict(row) == Stats(5, {"t": 3}, {"t": 4})
