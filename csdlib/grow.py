"""A drafter grown from its target's own layers (the start of Kangaroo, LayerSkip and DistilBERT): the
target's token embeddings, its first N layers, its final norm and its output layer, kept only for the tokens
the target writes most (FR-Spec), then distilled on the target's answers as the families' other drafters are
(`csdlib.distill`: cross-entropy on the target's tokens + KL to its top-16). The target still decides every
token, so a smaller output layer costs nothing in exactness.

    model = from_target_layers(target, n_layers=8, vocab=ids)   # the start: target[:8], its rows of ids
    report = grow_drafter("data/models/smollm2", n_layers=8)    # csd train --family smollm2 --from-target-layers 8

Untrained, an early exit knows little (issue 40 measured 7 % agreement after layer 10 of 30): the
distillation does the work. Any Llama-architecture target (SmolLM, TinyLlama, Llama) can grow one; a run is
checkpointed in the cache and resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CSDValueError

#: how smollm2's "big" drafter grows (sizes chosen by measurement: docs/ladder.md). Its answers are the
#: float32 target's own greedy ones (the outputs the float32 cascade reproduces), 160 new tokens (the
#: benchmarks ask for 128), cached apart from the smaller drafters' bf16 answers.
GROW_RECIPE = {
    "questions": 1024, "max_new_tokens": 160, "top_k": 16, "dtype": "float32",
    "vocab": 8192, "seq_len": 384, "batch": 16, "val_fraction": 0.02, "distill": 0.5,
    "layers": 8, "name": "big", "epochs": 2, "lr": 5e-4,
}
#: the whole recipe in a minute (tests): 8 questions, 16 new tokens, one layer, a few steps
TOY_GROW_RECIPE = {**GROW_RECIPE, "questions": 8, "max_new_tokens": 16, "vocab": 256, "val_fraction": 0.25,
                   "batch": 4, "layers": 1, "epochs": None, "steps": 4}
GROW_RECIPES = {"full": GROW_RECIPE, "toy": TOY_GROW_RECIPE}


def grown_config(target_config, n_layers: int, vocab: list[int], special: dict) -> dict:
    """`LlamaConfig` fields of a drafter grown from `target_config`'s first `n_layers` layers, on `vocab`
    (+ one row for every other token; special ids in its own rows)."""
    from .drafter_data import drafter_config

    c = target_config
    if getattr(c, "model_type", None) != "llama":
        raise CSDValueError(f"target: a drafter grows from a Llama-architecture target's layers, got "
                            f"model_type {getattr(c, 'model_type', None)!r}")
    if not 1 <= n_layers <= c.num_hidden_layers:
        raise CSDValueError(f"--from-target-layers: expected 1..{c.num_hidden_layers} (the target's layers), "
                            f"got {n_layers}")
    rope = getattr(c, "rope_parameters", None) or {"rope_theta": getattr(c, "rope_theta", 10000.0)}
    arch = {"hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_hidden_layers": n_layers,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "head_dim": getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
            "rms_norm_eps": c.rms_norm_eps, "hidden_act": c.hidden_act}
    out = drafter_config(arch, vocab, special)
    out["rope_theta"] = float(rope["rope_theta"])
    out["max_position_embeddings"] = c.max_position_embeddings
    out["tie_word_embeddings"] = bool(getattr(c, "tie_word_embeddings", True))
    return out


@torch.no_grad()
def from_target_layers(target, n_layers: int, vocab: list[int], special: dict | None = None):
    """A `LlamaForCausalLM` drafter: `target`'s embeddings and output layer restricted to `vocab`'s rows
    (one more row, the mean of the rows left out, stands for every other token), its first `n_layers`
    layers and its final norm, copied. With every layer and every token it computes the target's own logits."""
    from .training import build_model

    special = special or {}
    own = {t: i for i, t in enumerate(vocab)}
    if any(v is not None and v not in own for v in special.values()):
        raise CSDValueError(f"vocab: the special tokens {special} must be in the drafter's vocabulary")
    special = {k: v for k, v in special.items() if v is not None}
    model = build_model(grown_config(target.config, n_layers, vocab, special))
    rows = torch.tensor(vocab)
    emb = target.get_input_embeddings().weight.float()
    left = torch.ones(emb.shape[0], dtype=torch.bool)
    left[rows] = False
    other = emb[left].mean(0) if left.any() else emb.mean(0)
    model.get_input_embeddings().weight.copy_(torch.cat([emb[rows], other[None]]))
    if not model.config.tie_word_embeddings:                     # an untied target: its head's rows too
        head = target.get_output_embeddings().weight.float()
        rest = head[left].mean(0) if left.any() else head.mean(0)
        model.get_output_embeddings().weight.copy_(torch.cat([head[rows], rest[None]]))
    for mine, theirs in zip(model.model.layers, target.model.layers[:n_layers]):
        mine.load_state_dict({k: v.float() for k, v in theirs.state_dict().items()})
    model.model.norm.load_state_dict({k: v.float() for k, v in target.model.norm.state_dict().items()})
    return model.eval()


@torch.no_grad()
def early_exit_agreement(target, rows: list[dict], layers: list[int]) -> dict:
    """Untrained early exits: for each N in `layers`, the fraction of the target's answer tokens (`rows`:
    ``prompt`` / ``answer`` token ids, teacher forced) that its hidden state after layer N, put through
    its final norm and output layer, picks. What a grown drafter starts from."""
    hit = {n: 0 for n in layers}
    total = 0
    for r in rows:
        ids = torch.tensor([r["prompt"] + r["answer"]])
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states
        answer = torch.tensor(r["answer"])
        at = slice(len(r["prompt"]) - 1, ids.shape[1] - 1)
        for n in layers:
            h = hidden[n][0, at]               # the last entry has been through the final norm already
            h = h if n == target.config.num_hidden_layers else target.model.norm(h)
            hit[n] += int((target.lm_head(h).argmax(-1) == answer).sum())
        total += len(r["answer"])
    return {n: round(hit[n] / max(1, total), 4) for n in layers}


def grow(target, rows: list[dict], n_layers: int, work, recipe: dict = GROW_RECIPE, special: dict | None = None,
         seed: int = 0, progress: bool = True, name: str = "big"):
    """Grow one drafter from `target` (any Llama-architecture causal LM): its first `n_layers` layers and
    its output layer on the ``recipe["vocab"]`` tokens its answers `rows` use most (``prompt`` / ``answer``
    ids; with ``top_ids`` / ``top_logp``, the target's top-k log-probabilities, distilled as soft labels),
    trained in `work/<name>` (checkpointed: called again, it resumes or reuses a finished run) on all but
    ``recipe["val_fraction"]`` of the rows. Returns (model, its vocabulary, summary: training.json's fields
    with the held-out agreement before and after)."""
    from .distill import _train_config, _train_or_reuse
    from .drafter_data import SoftLabels, agreement, coverage, frequent_tokens, held_out, local_ids, sequences

    work, special = Path(work), {k: v for k, v in (special or {}).items() if v is not None}
    full = target.config.vocab_size
    val_rows, train_rows = held_out(rows, recipe["val_fraction"], seed)
    vocab = frequent_tokens(train_rows, recipe["vocab"], keep=list(special.values()), vocab_size=full)
    table = local_ids(vocab, full)
    train_seqs, val_seqs = sequences(train_rows, table), sequences(val_rows, table)
    soft = recipe["distill"] > 0 and all("top_ids" in r for r in rows)
    teacher = SoftLabels(train_rows, train_seqs, table, recipe["seq_len"]) if soft else None
    start = from_target_layers(target, n_layers, vocab, special)
    init = work / f"{name}.init"
    if not (init / "model.safetensors").is_file():
        start.save_pretrained(init)
    before = round(agreement(start, val_rows, table, vocab), 4)
    cfg = _train_config(recipe, {**recipe, "distill": recipe["distill"] if soft else 0.0}, seed)
    model, summary = _train_or_reuse(work / name, grown_config(target.config, n_layers, vocab, special),
                                     train_seqs, val_seqs, cfg, teacher, init, progress)
    summary = {**summary, "grown_from": {"target_layers": n_layers, "of": target.config.num_hidden_layers},
               "answers": len(rows), "answer_tokens": sum(len(r["answer"]) for r in rows),
               "vocab_coverage_val": round(coverage(val_rows, vocab), 5),
               "agreement_val_before": before, "agreement_val": round(agreement(model, val_rows, table, vocab), 4)}
    return model.eval(), vocab, summary


def grow_drafter(out_dir, n_layers: int | None = None, name: str | None = None, data_dir=None,
                 recipe: dict = GROW_RECIPE, cache=None, progress: bool = True, seed: int = 0) -> dict:
    """smollm2's drafter grown from the fetched target's first `n_layers` layers (default: the recipe's),
    distilled on the target's float32 greedy answers to the first ``recipe["questions"]`` GSM8K train
    questions (cached; 2 % held out) and installed as `out_dir/<name>` (weights in bf16, ``vocab.json``,
    ``training.json`` with its held-out agreement). Resumable: the training folder in the cache keeps a
    checkpoint. Returns what it measured."""
    from transformers import AutoModelForCausalLM

    from .answers import settings_key
    from .datasets import load_gsm8k
    from .distill import _install, _special_ids, answers_for
    from .smollm2 import cache_root, target_dir

    out_dir = Path(out_dir)
    n_layers, name = n_layers or recipe["layers"], name or recipe["name"]
    tdir = target_dir(cache, progress=progress)
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][:recipe["questions"]]
    tok, rows = answers_for(questions, tdir, recipe, cache, progress)
    settings = {k: v for k, v in recipe.items() if k not in ("name", "layers")}
    work = Path(cache or cache_root()) / "smollm2" / f"grow-{settings_key(**settings, layers=n_layers, seed=seed)}"
    target = AutoModelForCausalLM.from_pretrained(tdir, dtype=torch.float32).eval()
    model, vocab, summary = grow(target, rows, n_layers, work, recipe, _special_ids(tok), seed, progress, name)
    _install(work / name, out_dir / name, vocab, len(tok))
    summary = {**summary, "recipe": settings}
    (out_dir / name / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = {k: summary[k] for k in ("parameters", "val_loss", "train_time_s", "agreement_val_before",
                                      "agreement_val", "vocab_coverage_val")}
    if progress:
        print(f"{name} (target layers 1..{n_layers}): held-out agreement {summary['agreement_val_before']} -> "
              f"{summary['agreement_val']}", flush=True)
    return report
