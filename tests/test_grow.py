"""A drafter grown from its target's layers (csdlib.grow): the copy is exact (every layer and every token:
the target's own logits; fewer layers: the target's early exit through its final norm), the vocabulary's
rows are the target's, bad sizes are refused, and the grown drafter runs in a cascade that equals generate()."""

import pytest
import torch

import csdlib
from csdlib.errors import CSDValueError
from csdlib.grow import early_exit_agreement, from_target_layers, grown_config
from tiny import VOCAB, hf_greedy, llama


def _target():
    return llama(3, hidden=32, layers=3).float().eval()


def test_every_layer_and_token_gives_the_target_logits():
    target = _target()
    grown = from_target_layers(target, 3, list(range(VOCAB)))
    ids = torch.tensor([[5, 17, 40, 2, 88, 9]])
    with torch.no_grad():
        want = target(input_ids=ids).logits
        got = grown(input_ids=ids).logits[..., :VOCAB]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_fewer_layers_is_the_early_exit_on_the_kept_rows():
    target = _target()
    vocab = [7, 3, 50, 91, 12, 0, 44]
    grown = from_target_layers(target, 1, vocab)
    ids = torch.tensor([[3, 50, 7, 12]])                  # tokens inside the vocabulary
    local = torch.tensor([[vocab.index(t) for t in ids[0].tolist()]])
    with torch.no_grad():
        h = target(input_ids=ids, output_hidden_states=True).hidden_states[1]
        want = target.lm_head(target.model.norm(h))[..., vocab]
        got = grown(input_ids=local).logits[..., :len(vocab)]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # the extra row stands for every other token: the mean of the embedding rows left out
    left = [t for t in range(VOCAB) if t not in vocab]
    torch.testing.assert_close(grown.get_input_embeddings().weight[-1],
                               target.get_input_embeddings().weight[left].mean(0), rtol=0, atol=1e-6)


def test_early_exit_agreement_is_one_at_the_last_layer():
    target = _target()
    ids = [4, 9, 33]
    out = hf_greedy(target, ids, 6)[0].tolist()
    rows = [{"prompt": ids, "answer": out[len(ids):]}]
    got = early_exit_agreement(target, rows, [1, 3])
    assert got[3] == 1.0 and 0.0 <= got[1] <= 1.0


@pytest.mark.parametrize("n", [0, 4, -1])
def test_bad_layer_counts_are_refused(n):
    with pytest.raises(CSDValueError, match=r"--from-target-layers: expected 1\.\.3"):
        grown_config(_target().config, n, [1, 2], {})


def test_a_target_of_another_architecture_is_refused():
    from tiny import t5
    with pytest.raises(CSDValueError, match="Llama-architecture"):
        grown_config(t5(0).config, 1, [1, 2], {})


def test_a_grown_drafter_in_a_cascade_equals_generate():
    target = _target()
    vocab = list(range(0, VOCAB, 2))
    big = csdlib.HFModel(from_target_layers(target, 2, vocab), name="big", vocab=vocab, full_vocab_size=VOCAB)
    prompt = [5, 6, 7, 8]
    want = hf_greedy(target, prompt, 24)[0].tolist()
    table = csdlib.BigramTable.from_sequences([want], VOCAB)
    got = csdlib.generate(csdlib.HFModel(target, name="target"), [big, csdlib.MaG(table, k=2)], prompt,
                          k_matrix=[[3, 2], [0, 2]], max_new_tokens=24)
    assert got.sequences.tolist() == [want]


def test_adapters_merge_into_the_weights_and_the_delta_round_trips():
    from csdlib.lora import add_lora, apply_delta, low_rank_delta, merge_lora

    target = _target()
    vocab = list(range(0, VOCAB, 3))
    start = from_target_layers(target, 2, vocab)
    model = add_lora(from_target_layers(target, 2, vocab), rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.endswith("norm.weight") for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or n.endswith("norm.weight"):
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([[vocab.index(t) for t in (0, 3, 9, 30)]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        merged = merge_lora(model)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=0, atol=1e-5)
        delta = low_rank_delta(merged, start, rank=4)
        assert not any(k.endswith("embed_tokens.weight") for k in delta)      # frozen: not stored
        rebuilt = apply_delta(from_target_layers(target, 2, vocab), delta)
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, want, rtol=0, atol=1e-4)
    # a rank too small for the difference is not the same model: the round trip is what makes it exact
    with torch.no_grad():
        lossy = apply_delta(from_target_layers(target, 2, vocab), low_rank_delta(merged, start, rank=1))
        assert (lossy(input_ids=ids).logits - want).abs().max() > 1e-3


def test_a_fully_fine_tuned_drafter_is_kept_as_its_difference(tmp_path):
    from safetensors.torch import load_file

    from csdlib.grow import DELTA_FILE, load_grown, save_grown, stored_rank

    target = _target()
    vocab = list(range(0, VOCAB, 3))
    model = from_target_layers(target, 2, vocab)
    with torch.no_grad():                              # full fine-tuning: every weight moves, embeddings too
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    full = stored_rank({"lora_rank": 0}, target.config)
    assert full == min(target.config.hidden_size, target.config.intermediate_size)
    assert stored_rank({"lora_rank": 0, "delta_rank": 8}, target.config) == 8
    assert stored_rank({"lora_rank": 4}, target.config) == 4
    save_grown(tmp_path, model, target, 2, vocab, {}, full)
    stored = load_file(tmp_path / DELTA_FILE)
    assert stored["model.embed_tokens.weight"].dtype == torch.bfloat16            # a changed matrix, in bf16
    assert stored["model.norm.weight"].dtype == torch.float32
    ids = torch.tensor([[vocab.index(t) for t in (0, 3, 9, 30)]])
    rebuilt = load_grown(tmp_path, "big", target).model
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, rebuilt(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0.05)                     # bf16 rounding, no more
    assert (got.argmax(-1) == want.argmax(-1)).all()
    save_grown(tmp_path / "r1", model, target, 2, vocab, {}, 1)                   # a rank too small loses it
    lossy = load_grown(tmp_path / "r1", "big", target).model
    with torch.no_grad():
        assert (lossy(input_ids=ids).logits - want).abs().max() > (got - want).abs().max()


def test_the_sweep_reads_its_points_and_refuses_unknown_settings():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "grow_sweep.py"
    spec = importlib.util.spec_from_file_location("grow_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    assert sweep.parse_points("layers=8; layers=4,questions=512;lr=1e-3") == [
        {"layers": 8}, {"layers": 4, "questions": 512}, {"lr": 1e-3}]
    assert sweep.parse_points("lora_rank=64,name=adapters") == [{"lora_rank": 64, "name": "adapters"}]
    with pytest.raises(CSDValueError, match="key of GROW_RECIPE"):
        sweep.parse_points("layer=8")
    with pytest.raises(CSDValueError, match="key=value"):
        sweep.parse_points("layers")
