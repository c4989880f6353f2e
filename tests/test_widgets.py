"""csdlib.widgets (notebook 04's tuning panel) built and driven without a browser, on tiny models: the
sliders' names, labels and order, the k-matrix they yield (through tuning.k_matrix_from_params), the
live evaluation on every move, and the optimize button. tests/test_browser.py drives the same panel in
JupyterLab."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import tiny
from csdlib import BigramTable, HFModel, MaG, tuning
from csdlib.cache import build_target_cache
from csdlib import Tree
from csdlib.widgets import TuningPanel, k_matrix_sliders

K = [[2, 1, 3], [0, 1, 2], [0, 0, 2]]          # target, mid, small reviewing; drafters mid, small, MaG


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    target = HFModel(tiny.llama(0), name="target")
    mid = HFModel(tiny.perturbed(target.model, 0.02, 1), name="mid")
    small = HFModel(tiny.perturbed(target.model, 0.05, 2), name="small")
    mag = MaG(BigramTable.from_sequences([list(range(20)) * 3], vocab_size=target.vocab_size), k=4)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, target.vocab_size, (n,), generator=g).tolist() for n in (5, 9)]
    cached = build_target_cache(target, prompts, 12, tmp_path_factory.mktemp("widgets") / "cache.jsonl")
    # a made-up latency model (seconds): predicted speedups without a calibration run
    latency = {m.name: {"a1": c, "a": c, "b": c / 10, "switch": 0.0, "tree_a": 1.1 * c, "tree_b": c / 10}
               for m, c in ((target, 1e-2), (mid, 2e-3), (small, 1e-3), (mag, 1e-5))}
    return target, cached, [mid, small, mag], prompts, latency


def test_sliders_are_named_labelled_and_bounded_per_entry():
    s = k_matrix_sliders(["mid", "small", "MaG"], K, 2.5, k_max=6, mag_k=4)
    assert list(s) == ["k0_0", "k0_1", "k0_2", "k1_1", "k1_2", "k2_2", "lenience"]     # the browser test's order
    assert [w.description for w in s.values()] == ["L0←mid", "L0←small", "L0←MaG size", "L1←small",
                                                   "L1←MaG size", "L2←MaG size", "lenience"]
    assert [w.value for w in s.values()] == [2, 1, 3, 1, 2, 2, 2.5]
    assert [w.max for w in s.values()] == [6, 6, 4, 6, 4, 4, 6.0]
    no_mag = k_matrix_sliders(["mid", "small"], [[1, 2], [0, 3]], k_max=5)
    assert [w.description for w in no_mag.values()] == ["L0←mid", "L0←small", "L1←small", "lenience"]
    assert [w.max for w in no_mag.values()] == [5, 5, 5, 6.0]


def test_panel_evaluates_each_move_with_k_matrix_from_params(cascade, monkeypatch, capsys):
    target, cached, drafters, prompts, latency = cascade
    seen = []
    original = tuning.k_matrix_from_params

    def spy(params, n):
        seen.append(dict(params))
        return original(params, n)

    monkeypatch.setattr(tuning, "k_matrix_from_params", spy)
    panel = TuningPanel(cached, drafters, prompts, K, 1.0, latency=latency, max_new_tokens=12, k_max=6)
    assert [type(w).__name__ for w in panel.children] == ["interactive", "Button", "Output"]
    assert len(panel.history) == 1 and panel.history[0]["k_matrix"] == K           # the initial setting
    panel.sliders["k0_0"].value = 3                                                  # a move: one evaluation
    panel.sliders["lenience"].value = 2.0
    assert panel.k_matrix == [[3, 1, 3], [0, 1, 2], [0, 0, 2]] and panel.lenience == 2.0
    assert [(r["k_matrix"], r["lenience"]) for r in panel.history] == [
        (K, 1.0), ([[3, 1, 3], [0, 1, 2], [0, 0, 2]], 1.0), ([[3, 1, 3], [0, 1, 2], [0, 0, 2]], 2.0)]
    assert seen and {"k0_0", "k1_2", "k2_2", "lenience"} <= set(seen[-1]) and seen[-1]["k0_0"] == 3
    # what the panel shows is evaluate_cascade's result for that setting, against the cached target
    expected = tuning.evaluate_cascade(cached, drafters, prompts, panel.k_matrix, 2.0, max_new_tokens=12,
                                       latency=latency)
    assert panel.history[-1]["swi"] == expected["swi"]
    assert panel.history[-1]["predicted_speedup"] == expected["predicted_speedup"]
    assert panel.best.best is max(panel.history, key=lambda r: r["swi"]["parameters"])
    text = capsys.readouterr().out          # (outside a kernel the output widget lets it through)
    assert "k_matrix=[[3, 1, 3], [0, 1, 2], [0, 0, 2]] lenience=2 tree=None: predicted speedup" in text
    assert f"SWI {expected['swi']['parameters']:.3f}" in text and str(panel.best) in text
    panel.set([[1, 0, 0], [0, 0, 0], [0, 0, 0]], 1.0)                              # moves 5 sliders ...
    assert len(panel.history) == 4 and panel.history[-1]["k_matrix"] == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_optimize_button_moves_the_sliders_to_the_result(cascade, capsys):
    target, cached, drafters, prompts, latency = cascade
    panel = TuningPanel(cached, drafters, prompts, K, 1.0, latency=latency, max_new_tokens=12, k_max=4,
                        n_trials=4, measure_with=target)
    panel.button.click()
    tuned = tuning.optimize(cached, drafters, prompts, "latency", n_trials=4, k_max=4, latency=latency,
                            start=(K, 1.0), max_new_tokens=12, tree_max=(4, 8, 4))
    assert panel.k_matrix == tuned.k_matrix and panel.lenience == tuned.lenience and panel.tree == tuned.tree
    assert len(panel.history) == 2 and panel.history[-1]["k_matrix"] == tuned.k_matrix   # evaluated once
    report = capsys.readouterr().out.split("optimize: ")[1]
    assert report.startswith(f"{len(tuned.study.trials)} trials in ") and f"-> k_matrix={tuned.k_matrix}" in report
    assert "measuring with the real target" in report and "measured s" in report    # predicted_vs_measured


def test_tree_sliders_shape_the_targets_tree(cascade):
    """The tree sliders: width 1 is the chain; a wider tree is evaluated as `tuning.tree_of` reads it and
    feeds the target more tokens per call; `set` moves them to a tree and back to the chain."""
    target, cached, drafters, prompts, latency = cascade
    panel = TuningPanel(cached, drafters, prompts, K, 1.0, latency=latency, max_new_tokens=12, k_max=6)
    assert [panel.sliders[n].description for n in ("tree_width", "tree_depth", "tree_extend", "tree_budget")] == [
        "tree width", "tree depth", "tree extend", "tree budget"]
    assert panel.sliders["tree_budget"].value == panel.sliders["tree_budget"].max == 3 * 8     # all: no budget
    assert panel.tree is None and panel.sliders["tree_width"].value == 1
    panel.sliders["tree_depth"].value = 3
    panel.sliders["tree_width"].value = 3
    assert panel.tree == Tree([[3, 3, 3]], extend=0)
    expected = tuning.evaluate_cascade(cached, drafters, prompts, K, 1.0, max_new_tokens=12, latency=latency,
                                       tree=panel.tree)
    assert panel.history[-1]["stats"] == expected["stats"]
    assert panel.history[-1]["tokens_fed_per_target_call"] > panel.history[0]["tokens_fed_per_target_call"]
    panel.set(K, 1.0, Tree([[2, 2]], extend=1))
    assert panel.tree == Tree([[2, 2]], extend=1)
    panel.sliders["tree_budget"].value = 2                          # 2 = all of a width-2, depth-2 tree
    assert panel.tree == Tree([[2, 2]], extend=1)
    panel.set(K, 1.0, Tree([[3, 3, 3, 3]], extend=1, budget=2))
    assert panel.tree == Tree([[3, 3, 3, 3]], extend=1, budget=2) and panel.sliders["tree_budget"].value == 2
    fed = panel.history[-1]["tokens_fed_per_target_call"]
    panel.sliders["tree_budget"].value = 5
    assert panel.history[-1]["tokens_fed_per_target_call"] > fed      # more candidates, more tokens fed
    panel.set(K, 1.0)
    assert panel.tree is None
