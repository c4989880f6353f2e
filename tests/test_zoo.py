"""The gsm8k-tiny recipe (toy budget, end to end) and the committed family."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from csdlib import datasets as csd_datasets
from csdlib.datasets import GSM8K_TEMPLATE, gsm8k_dir, gsm8k_final_answer, gsm8k_prompt
from csdlib.recipe import DEFAULT_FAMILY_DIR, MODEL_NAMES, count_parameters, tokenize_examples, train_family

GSM8K = gsm8k_dir()
needs_gsm8k = pytest.mark.skipif(
    GSM8K is None,
    reason="GSM8K not found: set CSD_DATA_DIR to a folder containing gsm8k/{train,dev}.jsonl "
           "(CI uses ../shared/datasets)",
)

# A made-up question (no GSM8K text in the repository).
QUESTION = "Tom has 3 boxes with 4 pens in each box. How many pens does Tom have"


def test_prompt_template():
    p = gsm8k_prompt(QUESTION)
    assert p == GSM8K_TEMPLATE.format(question=QUESTION)
    assert p.startswith("Reason the math question below step by step. Question: ")
    assert p.endswith(".\n Answer: ")


def test_final_answer_parsing():
    assert gsm8k_final_answer("so 3*4=12\n#### 12") == "12"
    assert gsm8k_final_answer("#### 1,200") == "1200"
    assert gsm8k_final_answer("#### $5.50") == "5.5"
    assert gsm8k_final_answer("#### -3") == "-3"
    assert gsm8k_final_answer("no answer here") is None


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch):
    import datasets as hf_datasets

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(hf_datasets, "load_dataset", offline)
    assert gsm8k_dir(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="CSD_DATA_DIR"):
        csd_datasets.load_gsm8k("train", data_dir=tmp_path)


@pytest.fixture(scope="module")
def toy_family(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_family")
    torch.set_num_threads(1)
    summaries = train_family(out, data_dir=GSM8K, budget="toy", seed=0, progress=False)
    return out, summaries


@needs_gsm8k
def test_toy_recipe_end_to_end(toy_family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summaries = toy_family
    assert set(summaries) == set(MODEL_NAMES)
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    prompt = gsm8k_prompt(QUESTION)
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == prompt
    for name in MODEL_NAMES:
        d = out / name
        assert (d / "model.safetensors").is_file()
        log = [json.loads(line) for line in (d / "loss_log.jsonl").read_text().splitlines()]
        assert log and log[-1]["final"] and log[-1]["val_loss"] is not None
        m = AutoModelForCausalLM.from_pretrained(d)
        assert m.config.eos_token_id == tok.eos_token_id
        assert m.config.bos_token_id == tok.bos_token_id
        assert m.config.pad_token_id == tok.pad_token_id
        assert m.config.tie_word_embeddings
        gen = m.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert gen.shape[1] > len(ids)
    assert json.loads((out / "family.json").read_text())["budget"] == "toy"


@needs_gsm8k
def test_toy_recipe_resumes(toy_family):
    out, summaries = toy_family
    again = train_family(out, data_dir=GSM8K, budget="toy", seed=0, progress=False)
    assert again["target"]["train_time_s"] == summaries["target"]["train_time_s"]  # skipped, not retrained


@needs_gsm8k
def test_training_text_matches_inference_prompt(toy_family):
    from transformers import AutoTokenizer

    out, _ = toy_family
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    ex = {"question": QUESTION, "answer": "3 * 4 = 12 pens.\n#### 12"}
    (ids,) = tokenize_examples(tok, [ex])
    p = tok(gsm8k_prompt(QUESTION))["input_ids"]
    assert ids[: len(p)] == p and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == gsm8k_prompt(QUESTION) + ex["answer"]


def test_committed_family_loads_offline(monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fam = DEFAULT_FAMILY_DIR
    assert (fam / "tokenizer" / "tokenizer.json").is_file(), f"the default family is missing in {fam}"
    tok = AutoTokenizer.from_pretrained(fam / "tokenizer", local_files_only=True)
    params = {}
    for name in MODEL_NAMES:
        m = AutoModelForCausalLM.from_pretrained(fam / name, local_files_only=True)
        assert m.config.model_type == "llama"
        assert m.config.eos_token_id == tok.eos_token_id
        assert m.config.vocab_size == len(tok)
        params[name] = count_parameters(m)
    assert params["target"] / params["mid"] >= 4
    assert params["target"] / params["small"] >= 12
    root = fam.parents[2]
    tracked = subprocess.run(["git", "ls-files", "-z", str(fam)], cwd=root, capture_output=True, check=True)
    total = sum((root / f).stat().st_size for f in tracked.stdout.decode().split("\0") if f)
    assert 0 < total < 60e6                      # what git tracks, whatever training left beside it


def test_committed_target_has_lowest_val_loss():
    losses = {n: json.loads((DEFAULT_FAMILY_DIR / n / "training.json").read_text())["val_loss"]
              for n in MODEL_NAMES}
    assert losses["target"] < losses["mid"] < losses["small"]


@needs_gsm8k
def test_toy_recipe_loads_as_a_cascade(toy_family):
    from csdlib import generate, recipe, zoo

    out, _ = toy_family
    recipe.build_bigram_table(out, data_dir=GSM8K, budget="toy")
    fam = zoo.load(path=out)
    assert [d.name for d in fam.drafters] == ["mid", "small", "mag"]
    prompt = fam.prompt_ids(QUESTION)
    ref = fam.target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12,
                                    pad_token_id=fam.tokenizer.pad_token_id)
    out = generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, lenience=fam.lenience,
                   max_new_tokens=12)
    assert out.sequences.tolist() == ref.tolist()


@needs_gsm8k
def test_committed_family_cascade_reproduces_target_greedy_on_dev_prompts(monkeypatch):
    from csdlib import generate, zoo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fam = zoo.load()
    assert fam.drafters[-1].vocab_size == fam.target.vocab_size
    for ex in csd_datasets.load_gsm8k("dev", GSM8K)[:3]:
        prompt = fam.prompt_ids(ex["question"])
        ref = fam.target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=64,
                                        pad_token_id=fam.tokenizer.pad_token_id)
        out = generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, lenience=fam.lenience,
                       max_new_tokens=64)
        assert out.sequences.tolist() == ref.tolist()
        assert out.stats.calls["target"] < len(out.new_tokens)      # the cascade saved target calls


# Made-up questions (no GSM8K text in the repository; this test needs no $CSD_DATA_DIR).
QUESTIONS = [QUESTION, "A shop sells 5 apples for 2 dollars. How much do 20 apples cost",
             "Lisa runs 3 miles every day for 2 weeks. How many miles does she run"]


@pytest.mark.parametrize("name", ["gsm8k-tiny", "gsm8k-base"])
def test_committed_family_cascade_reproduces_target_greedy(name, monkeypatch):
    """A fresh clone, offline, no dataset: each committed family's default cascade equals the target's own
    greedy output (gsm8k-base: a 4-level cascade over gsm8k-tiny's shared models, the target in bf16
    on disk and fp32 once loaded)."""
    from csdlib import generate, zoo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not (zoo.FAMILY_DIRS[name] / "family.json").is_file():
        pytest.skip(f"{name} is not committed yet (csd train --family {name})")
    fam = zoo.load(name)
    assert fam.target.model.dtype == torch.float32
    assert fam.bigram_path.resolve() == (zoo.FAMILY_DIRS["gsm8k-tiny"] / "bigram.json").resolve()  # shared
    if name == "gsm8k-base":
        assert [d.name for d in fam.drafters] == ["tiny", "mid", "small", "mag"] and len(fam.k_matrix) == 4
        assert fam.target.cost > 5 * fam.drafters[0].cost
    saved = 0
    for question in QUESTIONS:
        prompt = fam.prompt_ids(question)
        ref = fam.target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=64,
                                        pad_token_id=fam.tokenizer.pad_token_id)
        out = generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, lenience=fam.lenience,
                       max_new_tokens=64)
        assert out.sequences.tolist() == ref.tolist()
        saved += len(out.new_tokens) - out.stats.calls["target"]
    assert saved > 0                                                     # the cascade saved target calls


def test_unknown_family_name():
    from csdlib import zoo

    with pytest.raises(ValueError, match="name: unknown family 'gpt-5'"):
        zoo.load("gpt-5")


@needs_gsm8k
def test_base_training_resumes_exactly_where_it_stopped(toy_family, tmp_path):
    """gsm8k-base's code path at toy budget (two stages, the second a warm restart from the first):
    interrupted after 3 steps of each stage, run again, it resumes from the checkpoint (not from scratch)
    and ends with the same weights as an uninterrupted run."""
    from safetensors.torch import load_file

    from csdlib import recipe

    tiny, _ = toy_family
    straight = recipe.train_base(tmp_path / "a", GSM8K, budget="toy", tiny_dir=tiny, progress=False)
    stopped = recipe.train_base(tmp_path / "b", GSM8K, budget="toy", tiny_dir=tiny, progress=False,
                                stop_after_steps=3)
    assert not stopped["complete"] and stopped["steps"] == 3
    assert (tmp_path / "b" / ".target.stage1.partial" / "checkpoint.pt").is_file()
    stopped = recipe.train_base(tmp_path / "b", GSM8K, budget="toy", tiny_dir=tiny, progress=False,
                                stop_after_steps=3)                  # finishes stage 1, stops in stage 2
    assert not stopped["complete"] and stopped["init_from"] == ".target.stage1.partial"
    assert (tmp_path / "b" / ".target.stage2.partial" / "checkpoint.pt").is_file()
    resumed = recipe.train_base(tmp_path / "b", GSM8K, budget="toy", tiny_dir=tiny, progress=False)
    assert resumed["complete"] and [s["steps"] for s in resumed["stages"]] == [4, 4]
    assert resumed["val_loss"] == straight["val_loss"]
    a = load_file(tmp_path / "a" / "target" / "model.safetensors")
    b = load_file(tmp_path / "b" / "target" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert next(iter(a.values())).dtype == torch.bfloat16          # stored in bf16
    # the warm restart really started from stage 1: stage 2's first loss is stage 1's level, not ln(vocab)
    log = [json.loads(l) for l in (tmp_path / "b" / "target" / "loss_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log if "loss" in r] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    first = [r["loss"] for r in log if "loss" in r]
    assert first[2] < first[0] - 0.1
    assert not (tmp_path / "b" / "target" / "checkpoint.pt").exists()
    info = json.loads((tmp_path / "b" / "family.json").read_text())
    assert info["name"] == "gsm8k-base" and (tmp_path / "b" / info["shares"] / "tokenizer").is_dir()
    # a finished stage trained with another recipe is not taken as this recipe's
    stage1 = tmp_path / "a" / ".target.stage1.partial" / "training.json"
    summary = json.loads(stage1.read_text())
    stage1.write_text(json.dumps({**summary, "stage": {**summary["stage"], "lr": 1.0}}))
    (tmp_path / "a" / "target" / "training.json").unlink()          # target not trained: the stages run
    with pytest.raises(ValueError, match=r"out_dir: .*stage1.partial holds a stage trained with .*'lr': 1.0"):
        recipe.train_base(tmp_path / "a", GSM8K, budget="toy", tiny_dir=tiny, progress=False)


def test_untrained_family_is_a_clear_error(tmp_path):
    from csdlib import zoo
    from csdlib.errors import MissingFileError

    with pytest.raises(MissingFileError, match="name: family 'mine' has no .*family.json"):
        zoo.load("mine", path=tmp_path)


def test_dropout_hooks_train_only_and_leave_a_plain_llama():
    """add_dropout: outputs vary between two training-mode forwards, not in eval mode (equal to the model
    without hooks), and removing the handles gives back the plain model."""
    from csdlib.training import add_dropout, build_model

    model = build_model(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             vocab_size=50), seed=0)
    x = torch.tensor([[1, 5, 7, 9, 3]])
    with torch.no_grad():
        plain = model.eval()(input_ids=x).logits
        handles = add_dropout(model, 0.5)
        assert len(handles) == 1 + 2 * 2                          # embeddings + attention and MLP per layer
        assert torch.equal(model.eval()(input_ids=x).logits, plain)
        model.train()
        a, b = model(input_ids=x).logits, model(input_ids=x).logits
        assert not torch.allclose(a, b) and not torch.allclose(a, plain)
        for h in handles:
            h.remove()
        assert torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)


def test_distillation_loss_is_kl_to_the_teacher_and_pulls_toward_it():
    """train_model(distill=w, teacher=T): the loss is (1 - w) * CE + w * KL(T || model). A teacher equal to
    the student gives KL 0 (and pure distillation then stays there); another teacher is approached: KL to
    it falls with distillation and not without. Bad weights are an error."""
    import copy

    from csdlib.errors import CSDValueError
    from csdlib.training import _collate, _kl_to_teacher, build_model, train_model

    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               vocab_size=50, pad_token_id=2)
    rng = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 50, (int(n),), generator=rng).tolist() for n in torch.randint(5, 20, (32,), generator=rng)]
    student0 = build_model(cfg, seed=0)
    x, mask, _ = _collate(seqs, list(range(8)), 2)
    with torch.no_grad():
        assert _kl_to_teacher(student0, student0.eval()(input_ids=x, attention_mask=mask).logits, x, mask) == 0
    kw = dict(steps=6, lr=3e-3, batch=8, warmup=1, progress=False, checkpoint_every_s=None)
    _, same = train_model(cfg, seqs, seqs, teacher=copy.deepcopy(student0), distill=1.0, weight_decay=0.0, **kw)
    assert same["final_train_loss"] < 1e-3 and same["distill"] == 1.0       # it stays at its own teacher

    teacher = build_model(cfg, seed=1)
    def kl(m):
        with torch.no_grad():
            return float(_kl_to_teacher(teacher, m.eval()(input_ids=x, attention_mask=mask).logits, x, mask))
    distilled, _ = train_model(cfg, seqs, seqs, teacher=teacher, distill=1.0, **kw)
    plain, _ = train_model(cfg, seqs, seqs, **kw)
    assert kl(distilled) < 0.5 * kl(student0) and kl(plain) > kl(distilled)
    with pytest.raises(CSDValueError, match="distill: a weight in"):
        train_model(cfg, seqs, seqs, distill=0.5, **kw)                      # no teacher
    with pytest.raises(CSDValueError, match="distill: a weight in"):
        train_model(cfg, seqs, seqs, teacher=teacher, distill=1.5, **kw)


def test_bf16_autocast_trains_like_float32_and_needs_bf16_units(monkeypatch):
    """TrainConfig(autocast="bfloat16"): the same run in bf16 mixed precision reaches nearly float32's losses
    (and not exactly them: bf16 was used), keeps float32 weights; a CPU without bf16 units, or another
    dtype, is refused with what to do."""
    import csdlib.precision
    from csdlib.errors import CSDValueError
    from csdlib.training import train_model

    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=50,
               pad_token_id=2)
    rng = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 50, (int(n),), generator=rng).tolist() for n in torch.randint(5, 20, (32,), generator=rng)]
    kw = dict(steps=12, lr=3e-3, batch=8, warmup=1, progress=False, checkpoint_every_s=None)
    monkeypatch.setattr(csdlib.precision, "cpu_isa", lambda: "AMX-BF16")
    f32, a = train_model(cfg, seqs, seqs, **kw)
    bf16, b = train_model(cfg, seqs, seqs, autocast="bfloat16", **kw)
    assert b["val_loss"] < math.log(47) - 0.05 and a["val_loss"] != b["val_loss"]   # it learns, in bf16
    assert abs(b["val_loss"] - a["val_loss"]) < 0.02 * a["val_loss"]
    assert {p.dtype for p in bf16.parameters()} == {torch.float32}
    with pytest.raises(CSDValueError, match="autocast: expected 'bfloat16'"):
        train_model(cfg, seqs, seqs, autocast="float16", **kw)
    monkeypatch.setattr(csdlib.precision, "cpu_isa", lambda: "neither")
    with pytest.raises(CSDValueError, match="needs a CPU with bf16 units .* train in float32"):
        train_model(cfg, seqs, seqs, autocast="bfloat16", **kw)


def test_train_config_of_a_budget_and_keyword_overrides():
    """recipe.train_config: a model's (or stage's) own entries over its budget's; train_model's keyword
    arguments replace fields of the TrainConfig it is given, and give the same model as that config."""
    from csdlib.recipe import BASE_BUDGETS, BUDGETS, TrainConfig, build_model, train_config, train_model

    stage2 = BASE_BUDGETS["full"]["models"]["target"]["stages"][1]
    c = train_config("full", stage2, seed=1, save_dtype=torch.bfloat16)
    assert (c.epochs, c.steps, c.lr, c.batch, c.warmup, c.dropout, c.distill) == (1, None, 3e-4, 8, 50, 0.1, 0.5)
    assert (c.seq_len, c.log_every, c.seed, c.save_dtype) == (384, 20, 1, torch.bfloat16)
    small = train_config("toy", BUDGETS["toy"]["models"]["small"])
    assert (small.steps, small.batch, small.warmup, small.dropout, small.distill) == (6, 8, 2, 0.0, 0.0)

    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1, vocab_size=50)
    rng = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 50, (int(n),), generator=rng).tolist() for n in torch.randint(5, 20, (24,), generator=rng)]
    base = TrainConfig(steps=4, lr=3e-3, batch=8, warmup=1, checkpoint_every_s=None)
    a, _ = train_model(cfg, seqs, None, base, progress=False)
    b, _ = train_model(cfg, seqs, None, TrainConfig(steps=4), lr=3e-3, batch=8, warmup=1, progress=False)
    c, _ = train_model(cfg, seqs, None, base, lr=1e-3, progress=False)
    same = [torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())]
    assert all(same) and not torch.equal(next(a.parameters()), next(c.parameters()))
    assert not torch.equal(next(a.parameters()), next(build_model(cfg).parameters()))
    with pytest.raises(TypeError):
        train_model(cfg, seqs, None, base, learning_rate=1e-3)


def test_a_checkpoint_of_another_run_is_an_error(tmp_path):
    """A run stopped early leaves out_dir/checkpoint.pt; a call with another schedule or model must not
    resume from it."""
    from csdlib.errors import CSDValueError
    from csdlib.recipe import TrainConfig, train_model

    cfg = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1, vocab_size=50)
    seqs = [[3 + (i * j) % 40 for j in range(6 + i % 5)] for i in range(16)]
    tc = TrainConfig(steps=4, lr=3e-3, batch=4, warmup=1, checkpoint_every_s=None)
    _, s = train_model(cfg, seqs, None, tc, out_dir=tmp_path, progress=False, stop_after_steps=2)
    assert not s["complete"] and (tmp_path / "checkpoint.pt").is_file()
    with pytest.raises(CSDValueError, match="out_dir: .*checkpoint.pt is a checkpoint of another run"):
        train_model(cfg, seqs, None, tc, out_dir=tmp_path, progress=False, steps=5)
    with pytest.raises(CSDValueError, match="checkpoint of another run"):
        train_model({**cfg, "hidden_size": 32}, seqs, None, tc, out_dir=tmp_path, progress=False)
    _, s = train_model(cfg, seqs, None, tc, out_dir=tmp_path, progress=False)
    assert s["complete"] and s["steps"] == 4 and not (tmp_path / "checkpoint.pt").exists()
