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
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import CSDValueError

#: how smollm2's "big" drafter grows (sizes chosen by measurement: docs/ladder.md). Its answers are the
#: float32 target's own greedy ones (the outputs the float32 cascade reproduces), 160 new tokens (the
#: benchmarks ask for 128), cached apart from the smaller drafters' bf16 answers. Every copied weight trains
#: (``lora_rank`` 0: rank-64 adapters reached 0.50 agreement, this 0.53); the family keeps the difference
#: from the target at rank ``delta_rank`` (0.52 as stored, 29 MB).
GROW_RECIPE = {
    "questions": 1024, "max_new_tokens": 160, "top_k": 16, "dtype": "float32",
    "vocab": 8192, "seq_len": 384, "batch": 16, "val_fraction": 0.02, "distill": 0.5,
    "layers": 8, "name": "big", "epochs": 3, "lr": 5e-4, "lora_rank": 0, "delta_rank": 128, "autocast": None,
}
#: the whole recipe in a minute (tests): 8 questions, 16 new tokens, one layer, a few steps
TOY_GROW_RECIPE = {**GROW_RECIPE, "questions": 8, "max_new_tokens": 16, "vocab": 256, "val_fraction": 0.25,
                   "batch": 4, "layers": 1, "epochs": None, "steps": 4, "lora_rank": 4, "delta_rank": None}
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
    with _hf_bars(progress):
        return _grow(target, rows, n_layers, Path(work), recipe, {k: v for k, v in (special or {}).items()
                                                                    if v is not None}, seed, progress, name)


@contextmanager
def _hf_bars(show: bool):
    """transformers' own progress bars (loading and saving weights) on or off for a while."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if show else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if was else logging.disable_progress_bar)()


def _grow(target, rows, n_layers, work, recipe, special, seed, progress, name):
    from dataclasses import replace

    from .distill import _train_config, _train_or_reuse
    from .drafter_data import SoftLabels, agreement, coverage, frequent_tokens, held_out, local_ids, sequences

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
    cfg = replace(_train_config(recipe, {**recipe, "distill": recipe["distill"] if soft else 0.0}, seed),
                  lora_rank=recipe.get("lora_rank", 0))
    config = grown_config(target.config, n_layers, vocab, special)
    model, summary = _train_or_reuse(work / name, config, train_seqs, val_seqs, cfg, teacher, init, progress)
    summary = {**summary, "grown_from": {"target_layers": n_layers, "of": target.config.num_hidden_layers},
               "answers": len(rows), "answer_tokens": sum(len(r["answer"]) for r in rows),
               "vocab_coverage_val": round(coverage(val_rows, vocab), 5),
               "agreement_val_before": before, "agreement_val": round(agreement(model, val_rows, table, vocab), 4)}
    return model.eval(), vocab, summary


#: a grown drafter's folder in a family: what it adds to its target's layers, not a copy of them
GROWN_FILE, DELTA_FILE = "grown.json", "delta.safetensors"


def save_grown(folder, model, target, n_layers: int, vocab: list[int], special: dict, rank: int) -> None:
    """A grown drafter as its family keeps it: ``grown.json`` (the layers kept, the rank, the special
    ids), ``delta.safetensors`` (`lora.low_rank_delta` against the target's copied layers: rank-`rank`
    factors and any other changed matrix, e.g. trained embeddings, in bf16; norms in float32) and
    ``vocab.json``; the rest comes from the fetched target (`load_grown`)."""
    from safetensors.torch import save_file

    from .lora import low_rank_delta

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = from_target_layers(target, n_layers, vocab, special)
    delta = low_rank_delta(model, start, rank)
    save_file({k: (v.to(torch.bfloat16) if v.dim() == 2 else v).contiguous() for k, v in delta.items()},
              folder / DELTA_FILE)
    (folder / GROWN_FILE).write_text(json.dumps({"target_layers": n_layers, "lora_rank": rank, "special": special},
                                                indent=2) + "\n")
    (folder / "vocab.json").write_text(json.dumps({"target_vocab_size": target.config.vocab_size, "ids": vocab}))


def load_grown(folder, name: str, target, dtype=None, device=None):
    """A grown drafter (`save_grown`'s folder) rebuilt on `target` (its fetched HF model): the target's
    first layers, embeddings and norm with the stored difference added, as an `HFModel` with its vocabulary."""
    from safetensors.torch import load_file

    from .errors import MissingFileError
    from .lora import apply_delta
    from .models import HFModel

    folder = Path(folder)
    try:
        info = json.loads((folder / GROWN_FILE).read_text())
        vocab = json.loads((folder / "vocab.json").read_text())
        delta = load_file(folder / DELTA_FILE)
    except (OSError, ValueError) as e:
        raise MissingFileError(f"{folder}: a grown drafter needs {GROWN_FILE}, vocab.json and {DELTA_FILE} ({e})") from e
    if vocab["target_vocab_size"] != target.config.vocab_size:
        raise CSDValueError(f"{folder}: grown for a target with {vocab['target_vocab_size']} tokens, this one has "
                            f"{target.config.vocab_size}")
    model = apply_delta(from_target_layers(target, info["target_layers"], vocab["ids"], info["special"]), delta)
    model = model.to(dtype=dtype or target.dtype, device=device or target.device).eval()
    return HFModel(model, name=name, vocab=vocab["ids"], full_vocab_size=vocab["target_vocab_size"])


def stored_rank(recipe: dict, target_config) -> int:
    """The rank a grown drafter's difference from its target is kept at: ``recipe["delta_rank"]``, else its
    adapters' rank (exact), else full rank (exact, and larger than the layers themselves)."""
    return recipe.get("delta_rank") or recipe.get("lora_rank") or min(target_config.hidden_size,
                                                                        target_config.intermediate_size)


def grow_drafter(out_dir, n_layers: int | None = None, name: str | None = None, data_dir=None,
                 recipe: dict = GROW_RECIPE, cache=None, progress: bool = True, seed: int = 0) -> dict:
    """smollm2's drafter grown from the fetched target's first `n_layers` layers (default: the recipe's),
    distilled on the target's float32 greedy answers to the first ``recipe["questions"]`` GSM8K train
    questions (cached; 2 % held out; every weight trained, or adapters of ``recipe["lora_rank"]``) and
    installed as `out_dir/<name>` (`save_grown`: its difference from the target at `stored_rank`,
    ``training.json`` with its held-out agreement, the loss log). Resumable: the training folder in the
    cache keeps a checkpoint. Returns what it measured."""
    import shutil

    from transformers import AutoModelForCausalLM

    from .answers import settings_key
    from .datasets import load_gsm8k
    from .distill import _special_ids, answers_for
    from .drafter_data import agreement, held_out, local_ids
    from .smollm2 import cache_root, target_dir

    out_dir = Path(out_dir)
    n_layers, name = n_layers or recipe["layers"], name or recipe["name"]
    tdir = target_dir(cache, progress=progress)
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][:recipe["questions"]]
    tok, rows = answers_for(questions, tdir, recipe, cache, progress)
    settings = {k: v for k, v in recipe.items() if k not in ("name", "layers")}
    first = {k: v for k, v in settings.items() if k != "delta_rank"}          # how it trains, not how it is kept
    work = Path(cache or cache_root()) / "smollm2" / f"grow-{settings_key(**first, layers=n_layers, seed=seed)}"
    target = AutoModelForCausalLM.from_pretrained(tdir, dtype=torch.float32).eval()
    special = {k: v for k, v in _special_ids(tok).items() if v is not None}
    model, vocab, summary = grow(target, rows, n_layers, work, recipe, special, seed, progress, name)
    dest = out_dir / name
    save_grown(dest, model, target, n_layers, vocab, special, stored_rank(recipe, target.config))
    shutil.copy2(work / name / "loss_log.jsonl", dest / "loss_log.jsonl")
    stored = load_grown(dest, name, target)         # what the family loads: its agreement is the one recorded
    val_rows = held_out(rows, recipe["val_fraction"], seed)[0]
    summary = {**summary, "recipe": settings,
               "agreement_val_stored": round(agreement(stored.model, val_rows, local_ids(vocab, len(tok)), vocab), 4)}
    (dest / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = {k: summary[k] for k in ("parameters", "val_loss", "train_time_s", "agreement_val_before",
                                      "agreement_val", "agreement_val_stored", "vocab_coverage_val")}
    if progress:
        print(f"{name} (target layers 1..{n_layers}): held-out agreement {summary['agreement_val_before']} -> "
              f"{summary['agreement_val']} (as stored: {summary['agreement_val_stored']})", flush=True)
    return report


def family_rows(name: str, n: int, max_new_tokens: int = 128, top_k: int = 16, data_dir=None,
                progress: bool = True) -> list[dict]:
    """What `grow` trains on for an embedded family: its target's float32 greedy answers to GSM8K train
    questions 0..n-1 (its own prompts: the chat template for smollm2, the seed's template for the others),
    each with its top-`top_k` log-probabilities; cached outside git like the drafters' answers."""
    from .answers import SHARD, generate_answers, settings_key
    from .corpus import _family_target
    from .datasets import load_gsm8k

    questions = [x["question"] for x in load_gsm8k("train", data_dir)][:n]
    tok, model, encode, cache = _family_target(name)
    key = settings_key(family=name, dtype="float32", max_new_tokens=max_new_tokens, top_k=top_k, grow=True)
    return generate_answers(model, tok, [encode(q) for q in questions], cache / f"grow-answers-{key}",
                            max_new_tokens=max_new_tokens, batch=SHARD, top_k=top_k, progress=progress)
