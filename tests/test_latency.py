"""The latency model (csdlib.latency): tokens fed per model, the a1 / a + b*n fit, storage and reuse,
predicted wall time. No timed assertions: fits are checked on synthetic timings."""

import json

import numpy as np
import pytest

import tiny
from csdlib import BigramTable, HFModel, MaG, Stats, Tree, generate
from csdlib import latency
from csdlib.cache import build_target_cache
from csdlib.errors import CSDValueError
from csdlib.tuning import evaluate_cascade


def test_fit_recovers_a_and_b_from_noisy_synthetic_timings():
    rng = np.random.default_rng(0)
    ns = np.repeat(np.arange(2, 17), 20)
    seconds = 0.004 + 0.0003 * ns + rng.normal(0, 1e-4, len(ns))
    a, b = latency.fit_latency(ns, seconds)
    assert a == pytest.approx(0.004, rel=0.03) and b == pytest.approx(0.0003, rel=0.03)
    assert latency.fit_latency([2, 4], [3.0, 5.0]) == pytest.approx((1.0, 1.0))
    with pytest.raises(CSDValueError, match="two distinct n"):
        latency.fit_latency([3, 3], [1.0, 2.0])


def test_calibrate_model_fits_the_timings_it_measured(monkeypatch):
    """calibrate_model on a model whose forward 'costs' exactly 1 + 0.25 n (a fake clock)."""
    clock = {"t": 0.0}

    class Fake:
        vocab_size, name, is_encoder_decoder = 50, "fake", False

        def start(self, prompt):
            self.fed = list(prompt)
            return list(prompt)

        def logits(self, seq, n):
            import torch
            fed = len(seq) - min(len(seq) - n, len(self.fed))
            clock["t"] += 1.5 if fed == 1 else 1.0 + 0.25 * fed
            self.fed = list(seq)
            return torch.zeros(n, 50)

    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock["t"])
    r = latency.calibrate_model(Fake(), context=10, ns=(1, 2, 4, 8), repeats=3, warmup=1)
    assert r["a1"] == pytest.approx(1.5) and r["a"] == pytest.approx(1.0) and r["b"] == pytest.approx(0.25)
    assert r["median_s"] == pytest.approx([1.5, 1.5, 2.0, 3.0])


@pytest.fixture(scope="module")
def models():
    target = HFModel(tiny.llama(0), name="target")
    mid = HFModel(tiny.perturbed(target.model, 0.02, 1), name="mid")
    mag = MaG(BigramTable([(t + 1) % tiny.VOCAB for t in range(tiny.VOCAB)]), k=4)
    return target, mid, mag


def test_tokens_fed_ar_and_cached_target_replays_them_exactly(models, tmp_path):
    target, mid, mag = models
    prompt = [3, 1, 4, 1, 5, 9, 2]
    ar = generate(target, [], prompt, max_new_tokens=10)
    assert ar.stats.tokens_fed == {"target": len(prompt) + 9}        # prefill, then one per call
    assert ar.stats.one_token_calls == {"target": 9} and ar.stats.calls == {"target": 10}
    assert ar.stats.switch_calls == {"target": 1}                         # only its first forward is cold
    sd = generate(target, [mid], prompt, k_matrix=[[3]], max_new_tokens=20).stats
    # every review follows the drafter (but the last, when no room is left to draft); the drafter's
    # first draft token of a round follows the target, the others follow the drafter itself
    assert sd.calls["target"] - 1 <= sd.switch_calls["target"] <= sd.calls["target"]
    assert sd.calls["target"] - 2 <= sd.switch_calls["mid"] <= sd.calls["target"] - 1 < sd.calls["mid"]
    prompts = [prompt, [7, 7, 8, 7, 7, 8, 7]]
    cached = build_target_cache(target, prompts, 24, tmp_path / "c.jsonl")
    for k in ([[3, 2], [0, 2]], [[1, 4], [0, 1]], [[5, 0], [0, 0]]):
        real = evaluate_cascade(target, [mid, mag], prompts, k, 2.0, max_new_tokens=24)["stats"]
        fast = evaluate_cascade(cached, [mid, mag], prompts, k, 2.0, max_new_tokens=24)["stats"]
        assert fast.tokens_fed == real.tokens_fed and fast.one_token_calls == real.one_token_calls
        assert fast.switch_calls == real.switch_calls
        assert real.tokens_fed["target"] > real.calls["target"] > real.one_token_calls["target"]
        assert real.tokens_fed["mag"] == 0
        assert real.tree_calls == {"target": 0, "mid": 0, "mag": 0}
    # tree drafts: the tree forwards and their tokens are counted apart, the same replayed as real
    tree = Tree([[2, 2, 2]], extend=1)
    real = evaluate_cascade(target, [mid, mag], prompts, [[3, 2], [0, 2]], 2.0, max_new_tokens=24, tree=tree)["stats"]
    fast = evaluate_cascade(cached, [mid, mag], prompts, [[3, 2], [0, 2]], 2.0, max_new_tokens=24, tree=tree)["stats"]
    assert fast.tree_calls == real.tree_calls and fast.tree_tokens_fed == real.tree_tokens_fed
    assert 0 < real.tree_calls["target"] <= real.calls["target"] - 1                  # the prefill is a chain
    assert real.tree_tokens_fed["target"] >= 2 * real.tree_calls["target"] and real.tree_calls["mid"] == 0
    assert Stats.from_dict(real.to_dict()) == real


def test_predict_wall_time_and_ar():
    lat = {"t": {"a1": 4.0, "a": 5.0, "b": 0.5}, "d": {"a1": 1.0, "a": 1.2, "b": 0.1, "switch": 0.25},
           "mag": latency.ZERO_LATENCY}
    stats = Stats(calls={"t": 3, "d": 10, "mag": 4}, tokens_fed={"t": 20, "d": 30, "mag": 0},
                  one_token_calls={"t": 0, "d": 8, "mag": 0})
    # t: 3 multi-token calls feeding 20; d: 8 one-token calls + 2 calls feeding 22
    assert latency.predict_wall_time(stats, lat) == pytest.approx(3 * 5 + 0.5 * 20 + 8 * 1 + 2 * 1.2 + 0.1 * 22)
    # 3 of d's calls came right after another model's forward: each pays d's switch penalty
    stats.switch_calls = {"t": 3, "d": 3}
    assert latency.predict_wall_time(stats, lat) == pytest.approx(3 * 5 + 0.5 * 20 + 8 * 1 + 2 * 1.2 + 0.1 * 22 + 0.75)
    assert latency.predict_ar_wall_time(lat["t"], 10, 5) == pytest.approx(5 + 0.5 * 10 + 4 * 4.0)
    assert latency.predict_ar_wall_time(lat["t"], 10, 0) == 0
    assert latency.forward_seconds(lat["t"], 1) == 4.0 and latency.forward_seconds(lat["t"], 6) == 8.0
    assert latency.latency_costs(lat) == {"t": 4.0, "d": 1.0, "mag": 0.0}
    with pytest.raises(CSDValueError, match="no calibration for model"):
        latency.predict_wall_time(Stats(calls={"x": 1}, tokens_fed={"x": 1}), lat)
    # tree forwards: their own line; a calibration without one prices them as chains
    trees = Stats(calls={"t": 3}, tokens_fed={"t": 20}, one_token_calls={"t": 0}, tree_calls={"t": 2},
                  tree_tokens_fed={"t": 16})
    assert latency.predict_wall_time(trees, lat) == pytest.approx(3 * 5 + 0.5 * 20)
    lat["t"].update(tree_a=7.0, tree_b=0.75)
    assert latency.predict_wall_time(trees, lat) == pytest.approx(1 * 5 + 0.5 * 4 + 2 * 7.0 + 0.75 * 16)


def test_calibration_is_stored_keyed_and_reused(models, tmp_path, monkeypatch):
    target, mid, mag = models
    path = tmp_path / "lat.json"
    lat = latency.calibrate_latency([target, mid, mag], path=path, threads=1, repeats=2, warmup=0,
                                 ns=(1, 2, 3), context=8, tree_ns=(2, 8))
    assert set(lat) == {"target", "mid", "mag"} and lat["target"]["a1"] > 0
    # a model that verifies trees gets its tree line too (timed on the cascade's tree review); MaG none
    assert {"tree_a", "tree_b"} <= set(lat["target"]) & set(lat["mid"]) and "tree_a" not in lat["mag"]
    # MaG runs no forward but its calls take time: one constant per call, much less than a forward
    assert 0 < lat["mag"]["a1"] == lat["mag"]["a"] < lat["mid"]["a1"] and lat["mag"]["b"] == 0
    data = json.loads(path.read_text())
    assert data["format"] == "csdlib.latency" and data["machine"] == latency.machine_id()
    # the switch penalty is measured against the family's largest other neural model
    assert {e["name"]: e.get("other") for e in data["entries"].values()} == {"target": "mid", "mid": "target",
                                                                             "mag": None}
    assert all(e["switch"] >= 0 for e in data["entries"].values())
    assert all(e["tree_ns"] == [2, 8] and min(e["tree_median_s"]) > 0 for e in data["entries"].values()
               if e["name"] != "mag")
    keys = sorted(data["entries"])
    assert keys == sorted([latency.latency_key(target, 1), latency.latency_key(mid, 1), latency.latency_key(mag, 1)])
    assert all(k.endswith("|cpu|1threads") for k in keys)
    monkeypatch.setattr(latency, "calibrate_model", lambda *a, **k: pytest.fail("re-measured a stored model"))
    monkeypatch.setattr(latency, "calibrate_free", lambda *a, **k: pytest.fail("re-measured a stored MaG"))
    assert latency.calibrate_latency([target, mid, mag], path=path, threads=1) == lat
    assert latency.stored_latency([target, mid, mag], path=path, threads=1) == lat
    assert latency.stored_latency([target, mid], path=path, threads=2) is None          # other thread count
    other = HFModel(tiny.llama(5), name="target")                                     # other weights
    assert latency.stored_latency([other], path=path, threads=1) is None
    cached = build_target_cache(target, [[1, 2, 3]], 4, tmp_path / "c.jsonl")
    assert latency.stored_latency([cached], path=path, threads=1) == {"target": lat["target"]}
    # an entry stored before trees were timed is measured again, once
    data["entries"][latency.latency_key(target, 1)].pop("tree_a")
    path.write_text(json.dumps(data))
    monkeypatch.undo()
    again = latency.calibrate_latency([target, mid, mag], path=path, threads=1, repeats=2, warmup=0, ns=(1, 2, 3),
                                      context=8, tree_ns=(2, 8))
    assert again["mid"] == lat["mid"] and again["target"] != lat["target"] and "tree_a" in again["target"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CSDValueError, match="not a csdlib latency file"):
        latency.load_latency(tmp_path / "bad.json")


def test_run_records_store_latency_costs_and_predictions(models):
    from csdlib.experiment import run, standard_methods, summarize

    target, mid, mag = models
    lat = {"target": {"a1": 0.004, "a": 0.005, "b": 0.0003}, "mid": {"a1": 0.001, "a": 0.0012, "b": 0.0001},
           "mag": latency.ZERO_LATENCY}
    methods = standard_methods([mid, mag], k_matrix=[[2, 2], [0, 2]], sd_k=2)
    df = run(target, methods, [(0, [3, 4, 5, 3, 4])], max_new_tokens=10, latency=lat, warmup=0, progress=False)
    for _, rec in df.iterrows():
        stats = Stats(calls={m: rec[f"calls.{m}"] for m in rec["models"]},
                      tokens_fed={m: rec[f"tokens_fed.{m}"] for m in rec["models"]},
                      one_token_calls={m: rec[f"one_token_calls.{m}"] for m in rec["models"]})
        assert rec["predicted_s"] == pytest.approx(latency.predict_wall_time(stats, lat))
        assert rec["model_costs.latency"] == {m: lat[m]["a1"] for m in rec["models"]}
        assert rec["threads"] >= 1
    s = summarize(df)
    assert s.loc["AR", "SWI latency"] == pytest.approx(1.0) and (s["predicted / measured"] > 0).all()


def test_predicted_vs_measured_on_tiny_models(models, tmp_path):
    from csdlib.tuning import predicted_vs_measured

    target, mid, mag = models
    lat = {"target": {"a1": 0.004, "a": 0.005, "b": 0.0003}, "mid": {"a1": 0.001, "a": 0.0012, "b": 0.0001},
           "mag": latency.ZERO_LATENCY}
    prompts = [[3, 4, 5, 3, 4], [9, 9, 8]]
    df = predicted_vs_measured(target, [mid, mag], prompts, [[2, 2], [0, 2]], 2.0, latency=lat, max_new_tokens=12)
    assert list(df.index) == ["AR", "cascade"] and df["equal"].all()
    ar = sum(latency.predict_ar_wall_time(lat["target"], len(p), 12) for p in prompts)
    assert df.loc["AR", "predicted s"] == pytest.approx(ar)
    assert df.loc["cascade", "speedup predicted"] == pytest.approx(ar / df.loc["cascade", "predicted s"])
    assert (df["measured s"] > 0).all() and df.loc["AR", "speedup measured"] == 1.0
    cached = build_target_cache(target, prompts, 12, tmp_path / "c.jsonl")
    with pytest.raises(CSDValueError, match="real target"):
        predicted_vs_measured(cached, [mid, mag], prompts, [[2, 2], [0, 2]], latency=lat)
