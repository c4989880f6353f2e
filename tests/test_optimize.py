"""csdlib.tuning.optimize / search: finds known optima on synthetic landscapes, and on tiny models its
answer is what evaluate_cascade says about it."""


import pytest

import tiny
from csdlib import BigramTable, HFModel, MaG, Tree
from csdlib.cache import build_target_cache
from csdlib.cost import expected_speedup
from csdlib.latency import ZERO_LATENCY
from csdlib.errors import CSDValueError
from csdlib.tuning import evaluate_cascade, k_matrix_from_params, optimize, search, tree_of


def test_search_finds_the_optimum_of_a_separable_landscape():
    """3 drafters: 6 free entries in 0..6 (7^6 = 117,649 settings) and lenience; one known optimum."""
    best_k = [[3, 0, 5], [0, 2, 1], [0, 0, 4]]

    def score(k, lenience, extra, report):
        return -sum((k[i][j] - best_k[i][j]) ** 2 for i in range(3) for j in range(i, 3)) - (lenience - 2.5) ** 2

    study = search(3, score, n_trials=150, k_max=6, lenience_range=(1.0, 6.0), seed=0, prune=False)
    assert k_matrix_from_params(study.best_params, 3) == best_k
    assert study.best_params["lenience"] == 2.5 and study.best_value == 0
    assert len(study.trials) == 150


def test_search_finds_the_best_sd_draft_length_of_leviathan_speedup():
    """SD's expected speedup (Leviathan et al.) has an interior optimum in k; the search must find it."""
    alpha, c = 0.8, 0.05
    truth = max(range(0, 13), key=lambda k: expected_speedup(alpha, c, k))
    assert 3 < truth < 12

    study = search(1, lambda k, l, e, r: expected_speedup(alpha, c, k[0][0]), n_trials=25, k_max=12,
                   lenience_range=None, seed=1, prune=False)
    assert study.best_params == {"k0_0": truth}


def test_search_scales_to_four_levels_and_respects_bounds():
    seen = []

    def score(k, lenience, extra, report):
        seen.append((k, extra["mag_k"]))
        return sum(map(sum, k)) - extra["mag_k"]

    study = search(4, score, n_trials=30, k_max=3, mag_column_max=5, extra_int={"mag_k": (1, 4)}, seed=0,
                   prune=False)
    assert len(study.best_params) == 10 + 2          # 10 free entries, lenience, mag_k
    for k, mag_k in seen:
        assert all(k[i][j] == 0 for i in range(4) for j in range(i))
        assert all(0 <= k[i][j] <= 3 for i in range(4) for j in range(i, 3))
        assert all(0 <= k[i][3] <= 5 for i in range(4)) and 1 <= mag_k <= 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    target = HFModel(tiny.llama(0), name="target")
    mid = HFModel(tiny.perturbed(target.model, 0.01, 1), name="mid")
    small = HFModel(tiny.perturbed(target.model, 0.05, 2), name="small")
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5], [1, 9, 2, 8, 3, 7], [40, 41, 42, 40, 41]]
    mag = MaG(BigramTable.from_sequences(prompts * 2, tiny.VOCAB), k=6)
    cached = build_target_cache(target, prompts, 24, tmp_path_factory.mktemp("opt") / "c.jsonl")
    return cached, [mid, small, mag], prompts


def test_optimize_latency_on_tiny_models_matches_evaluate_cascade(setup):
    cached, drafters, prompts = setup
    # a latency table where the target is expensive and verifying is almost free
    lat = {"target": {"a1": 1.0, "a": 1.0, "b": 0.01}, "mid": {"a1": 0.2, "a": 0.2, "b": 0.01},
           "small": {"a1": 0.05, "a": 0.05, "b": 0.01}, "mag": ZERO_LATENCY}
    start = ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], 1.0)
    tuned = optimize(cached, drafters, prompts, "latency", latency=lat, n_trials=25, k_max=4, max_new_tokens=24,
                     start=start, seed=0)
    again = evaluate_cascade(cached, drafters, prompts, tuned.k_matrix, tuned.lenience, max_new_tokens=24,
                             latency=lat)
    assert tuned.value == pytest.approx(again["predicted_speedup"]) == pytest.approx(tuned.study.best_value)
    first = evaluate_cascade(cached, drafters, prompts, *start, max_new_tokens=24, latency=lat)
    assert tuned.value >= first["predicted_speedup"] > 0            # never worse than the start
    assert tuned.value > 1.2
    assert tuned.mag_k == max(1, max(row[2] for row in tuned.k_matrix))
    assert drafters[2].k == 6                                        # MaG's k is restored
    assert tuned.as_default()["objective"] == "latency"


def test_optimize_swi_and_seed_mode_searches_mag_k(setup):
    cached, (mid, small, _), prompts = setup
    seed_mag = MaG(BigramTable.from_sequences(prompts, tiny.VOCAB), k=10, seed_mode=True)
    tuned = optimize(cached, [small, seed_mag], prompts, "parameters", n_trials=12, k_max=3, max_new_tokens=24)
    assert "mag_k" in tuned.study.best_params and tuned.mag_k == tuned.study.best_params["mag_k"]
    assert tuned.value == pytest.approx(tuned.evaluation["swi"]["custom"]) and seed_mag.k == 10


def test_optimize_errors(setup, tmp_path, monkeypatch):
    cached, drafters, prompts = setup
    monkeypatch.setenv("CSD_LATENCY_FILE", str(tmp_path / "none.json"))
    with pytest.raises(CSDValueError, match="csd calibrate"):
        optimize(cached, drafters, prompts, "latency", n_trials=1)
    with pytest.raises(CSDValueError, match="objective"):
        optimize(cached, drafters, prompts, "flops", n_trials=1)
    with pytest.raises(CSDValueError, match="drafters"):
        optimize(cached, [], prompts, "parameters", n_trials=1)
    with pytest.raises(CSDValueError, match="prompts"):
        optimize(cached, drafters, [], "parameters", n_trials=1)


def test_effective_k_matrix_zeroes_rows_of_levels_that_never_review():
    from csdlib.tuning import effective_k_matrix

    # target drafts with small (column 1) and MaG: mid (level 1) never reviews, small (level 2) does
    assert effective_k_matrix([[0, 3, 2], [0, 5, 7], [0, 0, 4]]) == [[0, 3, 2], [0, 0, 0], [0, 0, 4]]
    assert effective_k_matrix([[2, 0, 0], [0, 0, 1], [0, 0, 4]]) == [[2, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert effective_k_matrix([[1, 1], [0, 3]]) == [[1, 1], [0, 3]]
    assert effective_k_matrix([[0, 1], [0, 3]]) == [[0, 1], [0, 0]]


def test_optimize_tries_each_single_drafter_first(setup):
    """After the start, each drafter alone at the `sd_starts` draft lengths is tried, so the tuned cascade
    is never predicted slower than those SD settings on the tuning prompts."""
    cached, drafters, prompts = setup
    lat = {"target": {"a1": 1.0, "a": 1.0, "b": 0.01}, "mid": {"a1": 0.2, "a": 0.2, "b": 0.01},
           "small": {"a1": 0.05, "a": 0.05, "b": 0.01}, "mag": ZERO_LATENCY}
    tuned = optimize(cached, drafters, prompts, "latency", latency=lat, n_trials=6, k_max=4, max_new_tokens=24,
                     sd_starts=(2, 4), prune=False)
    sds = [[[k if (i, j) == (0, d) else 0 for j in range(3)] for i in range(3)] for d in range(3) for k in (2, 4)]
    assert [k_matrix_from_params(t.params, 3) for t in tuned.study.trials] == sds
    best = max(evaluate_cascade(cached, drafters, prompts, k, 1.0, max_new_tokens=24, latency=lat)["predicted_speedup"]
               for k in sds)
    assert tuned.value == pytest.approx(best)


def test_optimize_searches_trees_and_picks_them_only_where_verifying_is_cheap(setup, capsys):
    """With `tree_max`, tree shapes are searched with the k-matrix. Where a fed token costs nothing the
    tuner picks a tree (more tokens per target call); where every fed token costs as much as a forward
    it keeps the chain, which is always tried first: it never picks a tree it predicts slower. A tree
    forward has its own line (tree_a + tree_b*n): with chains as cheap as before but a tree forward twice
    a chain's, the chain is kept too."""
    cached, drafters, prompts = setup
    cheap = {"target": {"a1": 1.0, "a": 1.0, "b": 0.0, "tree_a": 1.0, "tree_b": 0.0},
             "mid": {"a1": 0.01, "a": 0.01, "b": 0.0}, "small": {"a1": 0.01, "a": 0.01, "b": 0.0}, "mag": ZERO_LATENCY}
    dear = {**cheap, "target": {"a1": 1.0, "a": 1.0, "b": 1.0, "tree_a": 1.0, "tree_b": 1.0}}
    dear_trees = {**cheap, "target": {"a1": 1.0, "a": 1.0, "b": 0.0, "tree_a": 2.0, "tree_b": 0.0}}
    start = ([[2, 0, 0], [0, 0, 0], [0, 0, 0]], 1.0)
    tuned = {name: optimize(cached, drafters, prompts, "latency", latency=lat, n_trials=20, k_max=3, max_new_tokens=24,
                            start=start, seed=0, tree_max=(3, 3, 2), lenience_range=None, prune=False)
             for name, lat in (("cheap", cheap), ("dear", dear), ("dear_trees", dear_trees))}
    assert tuned["cheap"].tree is not None and tuned["dear"].tree is None and tuned["dear_trees"].tree is None
    # a tree is chosen only when predicted `tree_margin` better than the best chain tried
    gain = tuned["cheap"].value / max(t.value for t in tuned["cheap"].study.trials if tree_of(t.params) is None)
    wary = optimize(cached, drafters, prompts, "latency", latency=cheap, n_trials=20, k_max=3, max_new_tokens=24,
                    start=start, seed=0, tree_max=(3, 3, 2), lenience_range=None, prune=False, tree_margin=gain - 1 + 0.01)
    assert gain > 1.01 and wary.tree is None and wary.value == pytest.approx(tuned["cheap"].value / gain)
    chain = evaluate_cascade(cached, drafters, prompts, tuned["cheap"].k_matrix, max_new_tokens=24, latency=cheap)
    assert tuned["cheap"].value > chain["predicted_speedup"]          # the tree beats its own chain
    assert tuned["cheap"].evaluation["tokens_per_target_call"] > chain["tokens_per_target_call"]
    assert tuned["cheap"].as_default()["tree"] == {"widths": [list(r) for r in tuned["cheap"].tree.widths],
                                                   "extend": tuned["cheap"].tree.extend,
                                                   "budget": tuned["cheap"].tree.budget}
    assert tuned["dear"].as_default()["tree"] is None
    # csd tune says how close the best tree came when it keeps the chain (and nothing when it took a tree)
    from csdlib.commands import _print_best_tree
    from csdlib.tuning import best_chain_and_tree

    chain_t, tree_t = best_chain_and_tree(tuned["dear"].study)
    assert chain_t.value == tuned["dear"].value and tree_t.value < chain_t.value
    _print_best_tree(tuned["dear"])
    _print_best_tree(tuned["cheap"])
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("best tree: k_matrix=")
    assert f"{tree_t.value / chain_t.value - 1:+.1%} against the best chain" in printed[0]
    # the budget is searched with the shape: from 1 extra candidate to all of them ((3 - 1) x 3)
    budgets = {t.params["tree_budget"] for t in tuned["cheap"].study.trials}
    assert min(budgets) >= 1 and max(budgets) <= 6 and len(budgets) > 2


def test_tree_of_reads_the_budget():
    assert tree_of({"tree_width": 3, "tree_depth": 4, "tree_extend": 1, "tree_budget": 3}) == Tree([[3] * 4], 1, 3)
    assert tree_of({"tree_width": 3, "tree_depth": 4, "tree_budget": 8}) == Tree([[3] * 4])    # 8 = all: none
    assert tree_of({"tree_width": 3, "tree_depth": 4}) == Tree([[3] * 4])
    assert tree_of({"tree_width": 1, "tree_depth": 4, "tree_budget": 2}) is None


def test_optimize_refuses_trees_without_a_tree_line(setup):
    """A calibration from before trees were timed would price a tree forward as a chain's: refused."""
    cached, drafters, prompts = setup
    lat = {"target": {"a1": 1.0, "a": 1.0, "b": 0.0}, "mid": {"a1": 0.01, "a": 0.01, "b": 0.0},
           "small": {"a1": 0.01, "a": 0.01, "b": 0.0}, "mag": ZERO_LATENCY}
    with pytest.raises(CSDValueError, match=r"tree_max: the latency calibration of 'target' has no tree line"):
        optimize(cached, drafters, prompts, "latency", latency=lat, n_trials=2, max_new_tokens=8, tree_max=(2, 2, 0))
    optimize(cached, drafters, prompts, "latency", latency=lat, n_trials=2, max_new_tokens=8)   # chains: fine
