"""The training recipe of the embedded model families "gsm8k-tiny" and "gsm8k-base": seeded, reproducible, CPU.

(Loading a trained family is `csdlib.zoo`; `csd train ...` runs this recipe.)

No model hub is reachable from the project's machines, so the project trains its own small family
(one byte-level BPE tokenizer, three ``LlamaForCausalLM`` models: **target**, **mid**, **small**) on
GSM8K's training split (MIT licence, read from a local directory, never committed) and ships the weights
(safetensors) under ``data/models/gsm8k-tiny/``.

Training text
-------------
Each training example is the seed's prompt followed by the GSM8K reference answer and EOS::

    <s> + tok("Reason the math question below step by step. Question: {question}.\\n Answer: ")
        + tok(answer) + </s>

The prompt and the answer are tokenized *separately* and their ids concatenated, so the prompt's
trailing space is a token of its own exactly as it is at inference time (byte-level BPE would otherwise
merge it into the answer's first word). The tokenizer's post-processor prepends ``<s>``, so
``tokenizer(gsm8k_prompt(q))`` gives exactly the ids the models were trained on; the answer ends in
``#### <number></s>``, so the models learn to stop. The loss is taken over all tokens (prompt and answer).
2% of the training split (seeded) is held out for the validation loss.

Recipe
------
The training loop is ``csdlib.training.train_model`` with a ``TrainConfig`` (``train_config`` builds it
from a budget below): batches are whole examples (truncated to ``seq_len``), grouped by length to keep
padding small, padded on the right and masked; AdamW (betas 0.9/0.95, weight decay 0.1 on matrices),
linear warm-up then cosine decay to 10% of the peak learning rate, gradient clipping at 1.0. Embeddings
are tied. Each model is saved (``save_pretrained``, safetensors fp32) as soon as it is trained, with its loss log
(``loss_log.jsonl``, one JSON object per logging interval and one per epoch with the validation loss)
and ``training.json``; re-running the command skips models already trained in ``out_dir`` (resume).

Sizes (chosen by measurement, see ``FAMILY`` and ``data/models/gsm8k-tiny/throughput.json``)
are such that target:mid >= 4 and target:small >= 12 in parameters, and the whole family trains in
about an hour on one CPU thread. ``benchmarks/train_throughput.py`` re-measures the training throughput.

Command::

    csd train [--family gsm8k-tiny|gsm8k-base] [--out DIR] [--budget full|toy] [--data-dir DIR]

Loading: ``csdlib.zoo.load()`` (the family as a cascade) or ``csdlib.zoo.load_family()`` (HF models).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from .datasets import gsm8k_prompt, load_gsm8k
from .errors import CSDValueError
from .training import (MAX_POSITION_EMBEDDINGS, TrainConfig, add_dropout, build_model,  # noqa: F401 (re-exported)
                       count_parameters, evaluate_loss, train_model)

__all__ = [
    "FAMILY",
    "BUDGETS",
    "MODEL_NAMES",
    "DEFAULT_FAMILY_DIR",
    "train_tokenizer",
    "tokenize_examples",
    "TrainConfig",
    "train_config",
    "build_model",
    "train_model",
    "train_family",
    "train_base",
    "build_bigram_table",
    "count_parameters",
]

MODEL_NAMES = ("target", "mid", "small")
DEFAULT_FAMILY_DIR = Path(__file__).resolve().parent.parent / "data" / "models" / "gsm8k-tiny"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [BOS, EOS, PAD]  # ids 0, 1, 2

# Architectures (LlamaConfig fields). vocab_size / special ids / max_position_embeddings are filled in.
FAMILY = {
    "target": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4),
    "mid": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=2),
    "small": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=1, num_attention_heads=1),
}

# Training budgets. "full" builds the committed family; "toy" runs end to end in seconds (CI).
BUDGETS = {
    "full": dict(
        vocab_size=4096,
        max_examples=None,
        seq_len=384,
        batch=16,
        val_fraction=0.02,
        warmup=100,
        log_every=20,
        models={
            "target": dict(arch=FAMILY["target"], epochs=4, lr=1e-3),
            "mid": dict(arch=FAMILY["mid"], epochs=6, lr=2e-3),
            "small": dict(arch=FAMILY["small"], epochs=8, lr=3e-3),
        },
    ),
    "toy": dict(
        vocab_size=320,
        max_examples=300,
        seq_len=256,
        batch=8,
        val_fraction=0.05,
        warmup=2,
        log_every=2,
        models={
            "target": dict(
                arch=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
                steps=6, lr=3e-3),
            "mid": dict(
                arch=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1),
                steps=6, lr=3e-3),
            "small": dict(
                arch=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1),
                steps=6, lr=3e-3),
        },
    ),
}

#: gsm8k-base: one larger target (same tokenizer, same data) on top of gsm8k-tiny's three models,
#: which become its drafters. Size chosen by measured training throughput (2 threads): d512/8 layers
#: (29.4 M parameters) trains at about 650-700 tokens/s alone (one epoch: about 30 min).
#: History (2026-11-28): gsm8k-tiny's recipe as is (3 epochs, batch 16, peak lr 7e-4, no dropout) gave
#: validation loss 3.254 / 2.790 / 2.590 after epochs 1 / 2 / 3 (train 2.15); a warm restart from it
#: (batch 8, peak lr 3e-4) reached 2.575 after one more epoch while the train loss fell to about 2.0:
#: the larger model memorises the 1.3 M-token training set, where gsm8k-tiny's 4.5 M target reached 2.425.
#: So the recipe adds dropout (0.1 on embeddings and on every attention / MLP output, `add_dropout`) and
#: smaller batches (8: twice the optimizer steps per epoch). That stage alone reached 3.416 / 2.974 /
#: 2.646 after epochs 1 / 2 / 3, on course to end above 2.425. Training runs in stages (each resumable;
#: a later stage is a warm restart from the previous one's weights): a second stage of one epoch at a
#: lower learning rate distils from gsm8k-tiny's target (half the loss is KL to its next-token
#: distributions, `train_model(distill=...)`): a smaller teacher with a lower validation loss, used as a
#: learned regulariser for a student that overfits.
BASE_ARCH = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8)
BASE_BUDGETS = {
    "full": dict(models={"target": dict(arch=BASE_ARCH, stages=[
        dict(epochs=4, lr=8e-4, batch=8, dropout=0.1),
        dict(epochs=1, lr=3e-4, batch=8, dropout=0.1, distill=0.5, warmup=50),
    ])}),
    "toy": dict(models={"target": dict(
        arch=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2),
        stages=[dict(steps=4, lr=3e-3, dropout=0.1), dict(steps=4, lr=1e-3, batch=4, warmup=1, distill=0.5)])}),
}
DEFAULT_BASE_DIR = DEFAULT_FAMILY_DIR.parent / "gsm8k-base"


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

def train_tokenizer(texts, vocab_size: int, out_dir):
    """Train a byte-level BPE tokenizer on ``texts`` and save it to ``out_dir``.

    Special tokens ``<s>`` (0, BOS), ``</s>`` (1, EOS), ``<pad>`` (2); the post-processor prepends BOS.
    The result loads with ``transformers.AutoTokenizer.from_pretrained(out_dir)``; it is returned as a
    ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        padding_side="left",  # batched generation pads on the left
        clean_up_tokenization_spaces=False,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return hf


def tokenize_examples(tokenizer, examples) -> list[list[int]]:
    """Ids of ``<s> prompt answer </s>`` for GSM8K examples (prompt and answer tokenized separately)."""
    prompts = [gsm8k_prompt(ex["question"]) for ex in examples]
    answers = [ex["answer"] for ex in examples]
    backend = tokenizer.backend_tokenizer  # no model_max_length warning; truncation happens in training
    p_ids = [e.ids for e in backend.encode_batch(prompts, add_special_tokens=True)]
    a_ids = [e.ids for e in backend.encode_batch(answers, add_special_tokens=False)]
    return [p + a + [tokenizer.eos_token_id] for p, a in zip(p_ids, a_ids)]


# --------------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------------

def _split(examples, val_fraction: float, seed: int):
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, round(val_fraction * len(examples)))
    val = sorted(idx[:n_val])
    train = sorted(idx[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]


def _examples(budget: str, data_dir, seed: int):
    """(train, validation) GSM8K examples of a budget: its first ``max_examples``, split (seeded)."""
    b = BUDGETS[budget]
    examples = load_gsm8k("train", data_dir)
    if b["max_examples"] is not None:
        examples = examples[: b["max_examples"]]
    return _split(examples, b["val_fraction"], seed)


def _is_trained(d: Path) -> bool:
    return (d / "training.json").is_file() and (d / "model.safetensors").is_file()


def _prepare(out_dir: Path, data_dir, budget: str, seed: int, tok_dir: Path | None = None):
    """Examples split, tokenizer (trained or reused; ``tok_dir`` defaults to ``out_dir/tokenizer``)
    and tokenized train/val sets."""
    from transformers import AutoTokenizer

    train_ex, val_ex = _examples(budget, data_dir, seed)
    tok_dir = Path(tok_dir) if tok_dir is not None else out_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        texts = [gsm8k_prompt(ex["question"]) for ex in train_ex] + [ex["answer"] for ex in train_ex]
        train_tokenizer(texts, BUDGETS[budget]["vocab_size"], tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return tok, tokenize_examples(tok, train_ex), tokenize_examples(tok, val_ex), len(train_ex), len(val_ex)


def _model_config(arch: dict, tok) -> dict:
    cfg = dict(arch)
    cfg.update(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,
    )
    return cfg


def train_config(budget: str, model: dict, seed: int = 0, **extra) -> TrainConfig:
    """The `TrainConfig` of one model (or stage) of a budget: its own entries (epochs or steps, lr, and
    optionally batch, warmup, dropout, distill) over the budget's (batch, seq_len, warmup, log_every)."""
    b = BUDGETS[budget]
    return TrainConfig(epochs=model.get("epochs"), steps=model.get("steps"), lr=model["lr"],
                       batch=model.get("batch", b["batch"]), seq_len=b["seq_len"], seed=seed,
                       warmup=model.get("warmup", b["warmup"]), log_every=b["log_every"],
                       dropout=model.get("dropout", 0.0), distill=model.get("distill", 0.0), **extra)


def train_family(out_dir, data_dir=None, budget: str = "full", seed: int = 0, progress: bool = True,
                 only=None) -> dict:
    """Train the tokenizer and the three models (target, mid, small) into ``out_dir``.

    Models already trained in ``out_dir`` are skipped (resume); each model is saved as soon as it is
    trained. ``only`` restricts training to some of ``MODEL_NAMES``. Returns ``{name: training summary}``
    and writes ``family.json`` (the recipe and the summaries).
    """
    if budget not in BUDGETS:
        raise CSDValueError(f"budget: unknown budget {budget!r}; expected one of {list(BUDGETS)}")
    b = BUDGETS[budget]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, train_ids, val_ids, n_train, n_val = _prepare(out_dir, data_dir, budget, seed)
    summaries = {}
    for name in (n for n in MODEL_NAMES if only is None or n in only):
        d, tmp, m = out_dir / name, out_dir / f".{name}.partial", b["models"][name]
        if _is_trained(d):
            summaries[name] = json.loads((d / "training.json").read_text())
            if progress:
                print(f"[zoo] {name}: already trained in {d}, skipping")
            continue
        if tmp.exists():
            shutil.rmtree(tmp)
        if progress:
            print(f"[zoo] training {name}: {m['arch']}", flush=True)
        _, summaries[name] = train_model(_model_config(m["arch"], tok), train_ids, val_ids,
                                         train_config(budget, m, seed), out_dir=tmp, progress=progress)
        if d.exists():
            shutil.rmtree(d)
        tmp.rename(d)
        if progress:
            print(f"[zoo] {name}: {summaries[name]['parameters']:,} params, val loss "
                  f"{summaries[name]['val_loss']}, {summaries[name]['train_time_s']} s", flush=True)
    family = {
        "name": "gsm8k-tiny",
        "budget": budget,
        "seed": seed,
        "template": "<s> + gsm8k_prompt(question) + answer + </s>",
        "n_train_examples": n_train,
        "n_val_examples": n_val,
        "train_tokens_per_epoch": sum(min(len(s), b["seq_len"]) for s in train_ids),
        "vocab_size": len(tok),
        "recipe": {k: v for k, v in b.items()},
        "models": {k: {kk: vv for kk, vv in v.items() if kk != "val_history"} for k, v in summaries.items()},
    }
    (out_dir / "family.json").write_text(json.dumps(family, indent=2) + "\n")
    return summaries


def _teacher(tiny_dir: Path):
    """gsm8k-tiny's target, in fp32: the teacher of a distillation stage."""
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(tiny_dir / "target", dtype=torch.float32)


def train_base(out_dir=None, data_dir=None, budget: str = "full", seed: int = 0, progress: bool = True,
               tiny_dir=None, checkpoint_every_s: float = 600.0, stop_after_steps: int | None = None) -> dict:
    """Train gsm8k-base's target into ``out_dir/target`` with gsm8k-tiny's tokenizer and data.

    The same examples, split, tokenization and optimizer as gsm8k-tiny's models, in stages
    (``BASE_BUDGETS``): each stage after the first is a warm restart from the previous stage's weights
    with its own schedule. Each stage trains in ``out_dir/.target.stage<i>.partial`` (git-ignored),
    checkpointing every ``checkpoint_every_s`` seconds, and is kept there once complete: running the
    command again resumes the stage in progress and skips the finished ones (a stage trained with
    another recipe is an error). Every stage's weights are saved in bf16 (the next stage and users load
    them as fp32); the last stage's go to ``out_dir/target``. The family shares gsm8k-tiny's tokenizer,
    drafters and bigram table (``family.json`` names the folder). ``stop_after_steps`` stops the stage
    in progress at that step, as if interrupted (tests); it returns that stage's incomplete summary. A
    stage with ``distill`` > 0 distils from gsm8k-tiny's target as well as learning from the data.
    """
    if budget not in BASE_BUDGETS:
        raise CSDValueError(f"budget: unknown budget {budget!r}; expected one of {list(BASE_BUDGETS)}")
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_BASE_DIR
    tiny_dir = Path(tiny_dir) if tiny_dir is not None else DEFAULT_FAMILY_DIR
    m = BASE_BUDGETS[budget]["models"]["target"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_trained(out_dir / "target"):
        if progress:
            print(f"[zoo] target: already trained in {out_dir / 'target'}, skipping")
        return json.loads((out_dir / "target" / "training.json").read_text())
    tok, train_ids, val_ids, n_train, n_val = _prepare(out_dir, data_dir, budget, seed, tiny_dir / "tokenizer")
    prev, summaries = None, []
    for i, stage in enumerate(m["stages"], start=1):
        sd = out_dir / f".target.stage{i}.partial"
        if _is_trained(sd):
            summ = json.loads((sd / "training.json").read_text())
            if summ.get("stage", stage) != stage:
                raise CSDValueError(f"out_dir: {sd} holds a stage trained with {summ['stage']}, not this "
                                    f"recipe's {stage}; delete it to train again")
        else:
            if progress:
                print(f"[zoo] gsm8k-base target, stage {i}/{len(m['stages'])}: {m['arch']} {stage} "
                      f"(partial state in {sd})", flush=True)
            cfg = train_config(budget, stage, seed + i - 1, save_dtype=torch.bfloat16,
                               checkpoint_every_s=checkpoint_every_s, stop_after_steps=stop_after_steps)
            _, summ = train_model(_model_config(m["arch"], tok), train_ids, val_ids, cfg, out_dir=sd,
                                  init_from=prev, teacher=_teacher(tiny_dir) if cfg.distill else None,
                                  progress=progress)
            if not summ["complete"]:
                return summ
            summ["stage"] = stage
            (sd / "training.json").write_text(json.dumps(summ, indent=2) + "\n")
        summaries.append(summ)
        prev = sd
    summ = _assemble_base(out_dir, summaries)
    _write_base_info(out_dir, tiny_dir, budget, seed, n_train, n_val, summ)
    if progress:
        print(f"[zoo] gsm8k-base target: {summ['parameters']:,} params, val loss {summ['val_loss']}, "
              f"{summ['train_time_s']} s", flush=True)
    return summ


def _assemble_base(out_dir: Path, summaries: list[dict]) -> dict:
    """``out_dir/target``: the last stage's weights, every stage's loss log (with its stage number) and
    the summary of the whole (the last stage's, with each stage's, the total time and tokens)."""
    n = len(summaries)
    summ = dict(summaries[-1])
    summ["stages"] = [{k: v for k, v in s.items() if k not in ("config",)} for s in summaries]
    summ["train_time_s"] = round(sum(s["train_time_s"] for s in summaries), 1)
    summ["tokens_seen"] = sum(s["tokens_seen"] for s in summaries)
    d = out_dir / "target"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy2(out_dir / f".target.stage{n}.partial" / f, d / f)
    with open(d / "loss_log.jsonl", "w", encoding="utf-8") as log:
        for i in range(1, n + 1):
            for line in (out_dir / f".target.stage{i}.partial" / "loss_log.jsonl").read_text().splitlines():
                log.write(json.dumps({"stage": i, **json.loads(line)}) + "\n")
    (d / "training.json").write_text(json.dumps(summ, indent=2) + "\n")
    return summ


def _write_base_info(out_dir: Path, tiny_dir: Path, budget: str, seed: int, n_train: int, n_val: int,
                     summ: dict) -> None:
    """gsm8k-base's ``family.json`` (what it shares with gsm8k-tiny, the recipe, the summary); entries
    written by others (the tuned default) are kept."""
    info_path = out_dir / "family.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info.update({
        "name": "gsm8k-base",
        "budget": budget,
        "seed": seed,
        "shares": os.path.relpath(tiny_dir, out_dir),
        "shared": "tokenizer, drafters (its target, mid, small) and bigram table of gsm8k-tiny",
        "template": "<s> + gsm8k_prompt(question) + answer + </s>",
        "n_train_examples": n_train,
        "n_val_examples": n_val,
        "recipe": {**{k: v for k, v in BUDGETS[budget].items() if k != "models"},
                   "models": BASE_BUDGETS[budget]["models"]},
        "models": {"target": {k: v for k, v in summ.items() if k != "val_history"}},
    })
    info_path.write_text(json.dumps(info, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# MaG's bigram table from the same training text
# --------------------------------------------------------------------------------------------------

BIGRAM_FILE = "bigram.json"


def build_bigram_table(out_dir=None, data_dir=None, seed: int = 0, budget: str = "full"):
    """MaG's greedy bigram table from the family's training text (the same examples and tokenization
    the models were trained on), saved as ``<out_dir>/bigram.json``."""
    from transformers import AutoTokenizer

    from .mag import BigramTable

    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_FAMILY_DIR
    train_ex, _ = _examples(budget, data_dir, seed)
    tok = AutoTokenizer.from_pretrained(out_dir / "tokenizer")
    vocab = json.loads((out_dir / "target" / "config.json").read_text())["vocab_size"]
    table = BigramTable.from_sequences(tokenize_examples(tok, train_ex), vocab_size=vocab)
    table.save(out_dir / BIGRAM_FILE)
    return table
