"""Linear layers prepacked for oneDNN (`csdlib.onednn`): the same products as `nn.Linear`, the same
parameters, and cascades on packed models as exact as on plain ones (float32: token for token against
transformers' greedy decoding of the same packed model; bfloat16: 0 WRONG)."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

import csdlib
from csdlib import BigramTable, HFModel, MaG, onednn, zoo
from csdlib.errors import CSDValueError
from csdlib.latency import latency_key
from csdlib.precision import float32_logits

from test_stress import VOCAB, check_bf16_random_cascades, check_exact_random_cascades   # the stress run's cascades
from tiny import llama, perturbed, t5

SEED = random.SystemRandom().randrange(2**31)


def f32(model):
    return model.float().eval()


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_a_packed_product_equals_the_plain_one(rows):
    torch.manual_seed(rows)
    layer = torch.nn.Linear(48, 80)
    packed = onednn.PackedLinear.of(layer)
    x = torch.randn(1, rows, 48)
    assert packed.weight is layer.weight and packed.bias is layer.bias
    torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)
    strided = torch.randn(1, 48, rows).transpose(1, 2)                  # not contiguous
    torch.testing.assert_close(packed(strided), layer(strided), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not onednn.supported(torch.bfloat16), reason="this CPU's oneDNN has no bfloat16 path")
def test_a_packed_bfloat16_product_equals_the_plain_one():
    layer = torch.nn.Linear(64, 96, bias=False).to(torch.bfloat16)
    x = torch.randn(1, 5, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(onednn.PackedLinear.of(layer)(x), layer(x))


def test_compiled_a_packed_model_still_multiplies_by_its_packed_weights():
    """Inside torch.compile every packed layer (and a float32 output layer) is one call of the custom op
    csdlib::packed_linear, not a plain product, and the logits equal the eager packed model's."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    model = float32_logits(llama(2, vocab=VOCAB).to(torch.bfloat16)) if onednn.supported(torch.bfloat16) \
        else f32(llama(2, vocab=VOCAB))
    layers = onednn.prepack(model)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    record = EagerAndRecordGraphs()
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, backend=record, fullgraph=True)(ids).logits
    ops = [n.target for g in record.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.csdlib.packed_linear) == layers and layers == 2 * 7 + 1
    assert torch.nn.functional.linear not in ops
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_with_gradients_a_packed_layer_multiplies_by_its_plain_weight():
    layer = onednn.PackedLinear.of(torch.nn.Linear(8, 4))
    layer(torch.randn(2, 8)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_prepack_swaps_every_linear_layer_and_keeps_the_parameters():
    model = f32(llama(1, vocab=VOCAB))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert onednn.prepack(model) == linears == 2 * 7 + 1          # q k v o gate up down per layer, the head
    assert onednn.prepack(model) == 0 and onednn.is_packed(model)   # idempotent
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == 0
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_tied_output_layer_stays_tied():
    model = f32(t5(2, vocab=VOCAB))                   # T5 ties its output layer to the shared embedding
    assert model.lm_head.weight is model.shared.weight
    onednn.prepack(model)
    assert isinstance(model.lm_head, onednn.PackedLinear) and model.lm_head.weight is model.shared.weight


@pytest.mark.parametrize("make", [llama, t5], ids=["llama", "t5"])
def test_packed_logits_equal_the_plain_ones(make):
    plain = f32(make(3, vocab=VOCAB))
    packed = f32(make(3, vocab=VOCAB))
    onednn.prepack(packed)
    ids = torch.randint(0, VOCAB, (1, 12))
    kwargs = {"decoder_input_ids": ids[:, :5]} if make is t5 else {}
    with torch.no_grad():
        torch.testing.assert_close(packed(ids, **kwargs).logits, plain(ids, **kwargs).logits, rtol=1e-4, atol=1e-5)


def test_the_float32_output_layer_of_a_half_model_is_packed_too():
    model = float32_logits(llama(4, vocab=VOCAB).to(torch.bfloat16))
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        plain = model(ids).logits
        assert onednn.prepack(model) >= 1 and model.lm_head.packed is not None
        packed = model(ids).logits
    assert packed.dtype == torch.float32
    if onednn.supported(torch.bfloat16):
        torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)


def test_prepack_refuses_what_is_not_a_model_and_leaves_other_devices_alone():
    with pytest.raises(CSDValueError, match="prepack needs a torch model or an HFModel, not str"):
        onednn.prepack("target")
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert onednn.prepack(model) == 0 and not onednn.is_packed(model)
    assert onednn.prepack(llama(5, vocab=VOCAB)) == 0               # float64: oneDNN has no packed path
    assert not onednn.is_packed(MaG(BigramTable.from_sequences([[1, 2, 3]], VOCAB), k=2))


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_random_float32_cascades_on_packed_models_equal_generate(kind):
    """Float32, every member packed: the cascade's output is transformers' greedy output of the same packed
    target, token for token (chains and trees, with and without dynamic draft length)."""
    torch.set_num_threads(1)
    rng = random.Random(f"{SEED}-{kind}")
    make = llama if kind == "llama" else t5
    width = {"hidden": 32} if kind == "llama" else {"d_model": 32}
    target = f32(make(rng.randrange(10**6), vocab=VOCAB, **width))
    pool = [f32(perturbed(target, noise, i)) for i, noise in enumerate([0.0, 0.02, 0.2])]
    for m in [target, *pool]:
        assert onednn.prepack(m) > 0
    check_exact_random_cascades(rng, target, target, pool, 60, f"seed {SEED} {kind}")


@pytest.mark.skipif(not onednn.supported(torch.bfloat16), reason="this CPU's oneDNN has no bfloat16 path")
def test_random_bfloat16_cascades_on_packed_models_have_no_wrong_output():
    torch.set_num_threads(1)

    def packed(target, pool):
        for m in [target, *pool]:
            onednn.prepack(m)
        return target

    check_bf16_random_cascades(random.Random(f"{SEED}-bf16"), 40, packed)


def test_zoo_packs_the_neural_members_and_the_latency_model_keeps_them_apart():
    packed, plain = zoo.load("gsm8k-tiny", prepack=True), zoo.load("gsm8k-tiny", prepack=False)
    neural = [m for m in [packed.target, *packed.drafters] if not isinstance(m, MaG)]
    assert len(neural) == 3 and all(onednn.is_packed(m) for m in neural)
    assert not any(onednn.is_packed(m) for m in [plain.target, *plain.drafters])
    base = zoo.load("gsm8k-base")              # the default: only models of >= PREPACK_MIN_PARAMS (its 29 M target)
    assert [onednn.is_packed(m) for m in [base.target, *base.drafters]] == [True, False, False, False, False]
    assert latency_key(packed.target) == latency_key(plain.target) + "|onednn"
    assert packed.target.fingerprint() == plain.target.fingerprint()        # the same weights, the same model


def test_speed_script_measures_packed_against_eager(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import speed

    monkeypatch.setattr(zoo, "PREPACK_MIN_PARAMS", 0)      # --prepack both: the default's choice, and eager

    out = tmp_path / "s"
    assert speed.main(["--family", "gsm8k-tiny", "--dtypes", "float32", "--prompts", "1", "--max-new-tokens", "8",
                       "--threads", "1", "--tune-prompts", "1", "--ks", "2", "--warmup", "0", "--peers", "default",
                       "--quiet", "--skip", "AR,HF assisted", "--prepack", "both", "--out", str(out),
                       "--latency-file", str(tmp_path / "latency.json")]) == 0
    run = json.loads((out / "speed.json").read_text())["runs"][0]
    rows = {r["method"]: r for r in run["rows"]}
    assert run["prepacked"] is True
    assert rows["HF greedy (eager)"]["kind"] == rows["CSD (eager)"]["kind"] == "eager"
    assert rows["CSD (eager)"]["identical"] == 1 and rows["CSD (eager)"]["tokens/target call"] >= 1
    assert rows["CSD (eager)"]["predicted s"] is None and rows["CSD"]["predicted s"] is not None
    assert "linear layers prepacked for oneDNN" in (out / "speed.md").read_text()


def test_forward_cost_script_times_eager_and_packed_per_member(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import forward_cost

    assert forward_cost.main(["--family", "gsm8k-tiny", "--dtypes", "float32", "--fed", "1,3", "--repeats", "2",
                              "--context", "16", "--threads", "1", "--static", "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "forward_cost.json").read_text())
    rows = {(r["model"], r["fed"]): r for r in d["rows"]}
    assert set(rows) == {(m, f) for m in ("target", "mid", "small") for f in (1, 3)}
    assert all(r["eager ms"] > 0 and r["packed ms"] > 0 and r["bandwidth ms"] > 0 for r in rows.values())
    assert all(r["static cache ms"] > 0 and r["dynamic cache ms"] > 0 for r in rows.values())      # --static
    assert rows["target", 1]["packed x step"] == 1.0 and d["bandwidth GB/s"] > 0
    assert "| float32 | target |" in (tmp_path / "forward_cost.md").read_text()


def test_forward_cost_script_compiles_the_one_token_step_once(tmp_path):
    """--compiled: the one-token step on a static cache, eager and compiled, one graph per model (no
    recompilation while it is timed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import forward_cost

    assert forward_cost.main(["--family", "gsm8k-tiny", "--dtypes", "float32", "--fed", "1", "--repeats", "2",
                              "--context", "16", "--threads", "1", "--compiled", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "forward_cost.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["target", "mid", "small"]
    assert all(r["graphs"] == 1 and r["compiled ms"] > 0 and r["static ms"] > 0 and r["compile s"] > 0 for r in rows)
    assert "compiled ms" in (tmp_path / "forward_cost.md").read_text()
