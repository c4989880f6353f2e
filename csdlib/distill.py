"""Drafters distilled for a real target (the "smollm2" family, and "smollm2-general"): the target's own
greedy answers to GSM8K *train* questions (`csdlib.answers`: generated in batches and cached outside git),
then small LLaMA drafters on a vocabulary of their own and MaG's bigram table trained on them
(`csdlib.drafter_data`: the vocabulary, soft labels, agreement) by ``csd train --family smollm2``.

    report = distill_family("data/models/smollm2")              # both rounds, resumable
    report = distill_general("data/models/smollm2-general", "data/models/smollm2")

Each answer keeps, per generated token, the target's top-`top_k` log-probabilities: the soft labels the
drafters are distilled from. `distill_general` trains general-purpose drafters from smollm2's, on the
target's answers to requests it wrote itself mixed with GSM8K answers. GSM8K's text is never written into
the project: the cache holds token ids only, under ``~/.cache/csdlib`` (or ``$CSD_CACHE``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .answers import SHARD, generate_answers, overlapping, self_instructions, settings_key
from .drafter_data import (SoftLabels, agreement, coverage, drafter_config, frequent_tokens, held_out, local_ids,
                           remap_vocab, sequences)
# what other modules, tests and the families' READMEs name as distill.X, from the modules they moved to
from .answers import instruction_prefix, tuning_requests  # noqa: F401

#: sizes chosen by measurement (one-token latency about 1/10 and 1/25 of the target's, float32, 2 threads)
RECIPE = {
    "questions": 2048,          # GSM8K train questions answered by the target (its first N)
    "max_new_tokens": 256,
    "top_k": 16,                # soft labels: the target's top-16 log-probabilities per answer token
    "dtype": "bfloat16",        # the target generates the answers in bf16 (batched; 5x float32's speed)
    "vocab": 8192,              # the drafters' output vocabulary (FR-Spec)
    "seq_len": 384,
    "batch": 16,
    "val_fraction": 0.02,
    "distill": 0.5,             # loss = 0.5 cross-entropy on the target's tokens + 0.5 KL to its top-16
    "models": {
        "mid": {"arch": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                         "num_attention_heads": 4}, "epochs": 2, "lr": 2e-3,
                "then": {"epochs": 3, "lr": 1e-3}},   # a warm restart: after 2 epochs mid agreed less than small
        "small": {"arch": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                           "num_attention_heads": 2}, "epochs": 4, "lr": 3e-3},
    },
    # a second round (`distill_more`): the target's answers to the next 2,048 train questions, and each
    # drafter trained on to them from the first round's weights (same loss, a new warm-up and cosine)
    "more": {"questions": [2048, 4096],
             "models": {"mid": {"epochs": 3, "lr": 1e-3}, "small": {"epochs": 3, "lr": 2e-3}}},
    # general-purpose drafters (`distill_general`, the family smollm2-general): the target's answers to
    # requests it wrote itself (Magpie), mixed with as many GSM8K answers of the second round
    "general": {"requests": 1024, "request_tokens": 96, "seed": 0, "gsm8k": 1024,
                "models": {"mid": {"epochs": 3, "lr": 1e-3}, "small": {"epochs": 3, "lr": 2e-3}}},
}
#: the whole recipe in a minute (tests): 8 questions, 16 new tokens, two tiny drafters
TOY_RECIPE = {**RECIPE, "questions": 8, "max_new_tokens": 16, "vocab": 256, "val_fraction": 0.25, "batch": 4,
              "models": {"mid": {"arch": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                          "num_attention_heads": 2}, "steps": 4, "lr": 3e-3},
                         "small": {"arch": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                            "num_attention_heads": 1}, "steps": 4, "lr": 3e-3}},
              "more": {"questions": [8, 12], "models": {"mid": {"steps": 2, "lr": 1e-3},
                                                          "small": {"steps": 2, "lr": 1e-3}}},
              "general": {"requests": 4, "request_tokens": 16, "seed": 0, "gsm8k": 4,
                          "models": {"mid": {"steps": 2, "lr": 1e-3}, "small": {"steps": 2, "lr": 1e-3}}}}
RECIPES = {"full": RECIPE, "toy": TOY_RECIPE}
#: what a drafter folder holds (copied from the training folder in the cache into the family folder)
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "training.json", "loss_log.jsonl")


#: GSM8K's answers are cached in rounds of this many questions (`answers_for`)
ROUND = 2048


def answers_for(questions: list[str], target_dir, recipe: dict = RECIPE, cache=None, progress: bool = True,
                first: int = 0, origin: str | None = None):
    """(tokenizer, rows): the target's greedy answers to `questions` (chat template), from the cache or
    generated now (`generate_answers`). `first`: the index of ``questions[0]`` in GSM8K's training split;
    GSM8K's answers are cached in rounds of `ROUND` questions (0..2047, 2048..4095, ...; a range that
    starts inside a round has a folder of its own); `origin`: where the questions come from when they are
    not GSM8K's (e.g. the target's own requests), one folder of its own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .smollm2 import cache_root
    from .zoo import chat_ids

    cut = (first // ROUND + 1) * ROUND - first           # where the next round starts, in `questions`
    if origin is None and len(questions) > cut:
        tok, rows = answers_for(questions[:cut], target_dir, recipe, cache, progress, first)
        return tok, rows + answers_for(questions[cut:], target_dir, recipe, cache, progress, first + cut)[1]
    tok = AutoTokenizer.from_pretrained(target_dir)
    prompts = [chat_ids(tok, q) for q in questions]
    done_file = Path(target_dir) / "converted.json"      # smollm2.convert's record: the GGUF's checksum
    source = json.loads(done_file.read_text())["gguf_sha256"] if done_file.is_file() else str(target_dir)
    key = settings_key(target=source,
                       dtype=recipe["dtype"], max_new_tokens=recipe["max_new_tokens"], top_k=recipe["top_k"],
                       batch=SHARD, **({"first": first} if first else {}),
                       **({"origin": origin} if origin else {}))
    folder = Path(cache or cache_root()) / "smollm2" / f"answers-{key}"
    done = sum(1 for _ in folder.glob("shard-*.pt")) if folder.is_dir() else 0
    if done * SHARD >= len(prompts):
        model = None                     # every shard is cached: no need to load the target
    else:
        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=getattr(torch, recipe["dtype"])).eval()
    return tok, generate_answers(model, tok, prompts, folder, max_new_tokens=recipe["max_new_tokens"],
                                 batch=SHARD, top_k=recipe["top_k"], progress=progress)


def _train_or_reuse(folder: Path, config, train, val, cfg, teacher, init_from, progress):
    """(model, summary) of `training.train_model` in `folder` (resumable), or of the model a complete run
    left there before."""
    from transformers import LlamaForCausalLM

    from .training import train_model

    done = folder / "training.json"
    if done.is_file() and json.loads(done.read_text()).get("complete"):
        return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32), json.loads(done.read_text())
    return train_model(config, train, val, cfg, out_dir=folder, teacher=teacher, init_from=init_from, progress=progress)


def _train_config(spec: dict, recipe: dict, seed: int):
    """The `training.TrainConfig` of one drafter's spec (epochs or steps, lr) in `recipe`'s loss and sizes."""
    from .training import TrainConfig

    return TrainConfig(epochs=spec.get("epochs"), steps=spec.get("steps"), lr=spec["lr"], warmup=100,
                       batch=recipe["batch"], seq_len=recipe["seq_len"], seed=seed, distill=recipe["distill"],
                       save_dtype=torch.bfloat16, autocast=recipe.get("autocast"))


def _special_ids(tok) -> dict:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def _install(folder: Path, dest: Path, vocab: list[int], full: int) -> None:
    """A trained drafter from its training folder into the family folder `dest`, with its vocabulary."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for f in MODEL_FILES:
        shutil.copy2(folder / f, dest / f)
    (dest / "vocab.json").write_text(json.dumps({"target_vocab_size": full, "ids": vocab}))


def _save_bigram(train_rows: list[dict], full: int, out_dir: Path) -> None:
    """MaG's bigram table over what the target writes: its answers (after the assistant's header), not the
    questions."""
    from .mag import BigramTable

    BigramTable.from_sequences([r["prompt"][-2:] + r["answer"] for r in train_rows], vocab_size=full).save(
        out_dir / "bigram.json")


def distill_family(out_dir, data_dir=None, recipe: dict = RECIPE, only=None, cache=None, progress: bool = True,
                   seed: int = 0) -> dict:
    """The smollm2 family's drafters and bigram table in `out_dir` (``data/models/smollm2``): the target's
    answers to the first ``recipe["questions"]`` GSM8K train questions, the drafters' vocabulary
    (``vocab.json``), each drafter trained (in the cache, resumable, then copied to `out_dir/<name>`) and
    MaG's bigram table (``bigram.json``) over the target's tokenizer; returns what it measured."""
    from dataclasses import replace

    from .datasets import load_gsm8k
    from .smollm2 import cache_root, target_dir

    out_dir = Path(out_dir)
    tdir = target_dir(cache, progress=progress)
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][:recipe["questions"]]
    tok, rows = answers_for(questions, tdir, recipe, cache, progress)
    full = len(tok)
    special = _special_ids(tok)
    val_rows, train_rows = held_out(rows, recipe["val_fraction"], seed)
    vocab = frequent_tokens(train_rows, recipe["vocab"], keep=[t for t in special.values() if t is not None],
                            vocab_size=full)
    table = local_ids(vocab, full)
    train_seqs, val_seqs = sequences(train_rows, table), sequences(val_rows, table)
    teacher = SoftLabels(train_rows, train_seqs, table, recipe["seq_len"]) if recipe["distill"] > 0 else None
    report = {"questions": len(rows), "answer_tokens": sum(len(r["answer"]) for r in rows),
              "answers_ending_in_eos": sum(r["answer"][-1] == tok.eos_token_id for r in rows if r["answer"]),
              "vocab": len(vocab), "vocab_coverage_val": round(coverage(val_rows, vocab), 5), "models": {}}
    settings = {k: v for k, v in recipe.items() if k not in ("models", "more")}
    work = Path(cache or cache_root()) / "smollm2" / f"train-{settings_key(**settings, vocab_ids=vocab, seed=seed)}"
    for name, spec in recipe["models"].items():
        if only and name not in only:
            continue
        config = drafter_config(spec["arch"], vocab, special)
        cfg = _train_config(spec, recipe, seed)
        model, summary = _train_or_reuse(work / name, config, train_seqs, val_seqs, cfg, teacher, None, progress)
        folder = work / name
        if "then" in spec:                    # a second stage, warm-started from the first
            stage1, folder = summary, work / f"{name}.2"
            model, summary = _train_or_reuse(folder, config, train_seqs, val_seqs,
                                             replace(cfg, epochs=spec["then"]["epochs"], lr=spec["then"]["lr"]),
                                             teacher, work / name, progress)
            summary["stage_1"] = {k: stage1[k] for k in ("steps", "epochs", "lr", "val_loss", "train_time_s")}
        summary["recipe"] = settings
        dest = out_dir / name
        _install(folder, dest, vocab, full)
        summary["agreement_val"] = round(agreement(model, val_rows, table, vocab), 4)
        (dest / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        report["models"][name] = {"parameters": summary["parameters"], "val_loss": summary["val_loss"],
                                  "agreement_val": summary["agreement_val"], "train_time_s": summary["train_time_s"]}
        if progress:
            print(f"{name}: {report['models'][name]}", flush=True)
    _save_bigram(train_rows, full, out_dir)
    if recipe.get("more"):
        report["more"] = distill_more(out_dir, data_dir, recipe, only, cache, progress, seed)
    return report


def distill_more(out_dir, data_dir=None, recipe: dict = RECIPE, only=None, cache=None, progress: bool = True,
                 seed: int = 0) -> dict:
    """The recipe's second round (``recipe["more"]``): the target's answers to GSM8K train questions
    ``[first, last)`` (cached like the first round's), 2 % held out, and each drafter of `out_dir` trained on
    to them from its first-round weights, with its own vocabulary and the same loss. A drafter whose
    ``training.json`` already records this round is left as it is. Returns, per drafter, its held-out
    agreement on the new answers before and after."""
    import shutil

    from transformers import LlamaForCausalLM

    from .datasets import load_gsm8k
    from .smollm2 import cache_root, target_dir

    out_dir, spec = Path(out_dir), recipe["more"]
    first, last = spec["questions"]
    tdir = target_dir(cache, progress=progress)
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][first:last]
    tok, rows = answers_for(questions, tdir, recipe, cache, progress, first=first)
    val_rows, train_rows = held_out(rows, recipe["val_fraction"], seed)
    report = {"questions": [first, first + len(rows)], "answer_tokens": sum(len(r["answer"]) for r in rows),
              "models": {}}
    for name, m in spec["models"].items():
        if only and name not in only:
            continue
        dest = out_dir / name
        before = json.loads((dest / "training.json").read_text())
        if before.get("more", {}).get("questions") == report["questions"]:
            report["models"][name] = {"skipped": "already trained on these answers"}
            continue
        vocab = json.loads((dest / "vocab.json").read_text())["ids"]
        table = local_ids(vocab, len(tok))
        train_seqs, val_seqs = sequences(train_rows, table), sequences(val_rows, table)
        teacher = SoftLabels(train_rows, train_seqs, table, recipe["seq_len"]) if recipe["distill"] > 0 else None
        config = {k: v for k, v in json.loads((dest / "config.json").read_text()).items()
                  if k not in ("architectures", "dtype", "transformers_version")}
        cfg = _train_config(m, recipe, seed)
        start = LlamaForCausalLM.from_pretrained(dest, dtype=torch.float32)
        agreement_before = round(agreement(start, val_rows, table, vocab), 4)
        weights = hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest()[:12]
        work = Path(cache or cache_root()) / "smollm2" / f"more-{settings_key(**spec, m=m, init=weights, seed=seed)}"
        model, summary = _train_or_reuse(work / name, config, train_seqs, val_seqs, cfg, teacher, dest, progress)
        for f in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy2(work / name / f, dest / f)
        shutil.copy2(work / name / "loss_log.jsonl", dest / "loss_log.more.jsonl")
        after = round(agreement(model, val_rows, table, vocab), 4)
        summary = {**before, "more": {"questions": report["questions"], "answer_tokens": report["answer_tokens"],
                                      **{k: summary[k] for k in ("steps", "epochs", "lr", "val_loss", "train_time_s",
                                                                 "threads", "final_train_loss")},
                                      "agreement_val_before": agreement_before, "agreement_val": after}}
        (dest / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        report["models"][name] = summary["more"]
        if progress:
            print(f"{name} (more): agreement on the new held-out answers {agreement_before} -> {after}", flush=True)
    return report


# --------------------------------------------------------------------------------------------------
# General-purpose drafters: the family smollm2-general
# --------------------------------------------------------------------------------------------------

def distill_general(out_dir, base_dir, data_dir=None, recipe: dict = RECIPE, only=None, cache=None,
                    progress: bool = True, seed: int = 0) -> dict:
    """General-purpose drafters for SmolLM2 (the family smollm2-general, `out_dir`), from `base_dir`'s
    (smollm2's, distilled on GSM8K): the target's greedy answers to ``recipe["general"]["requests"]``
    requests it wrote itself (`self_instructions`; any that shares 8 words in a row with a Spec-Bench
    question, when that file is at hand, is dropped), mixed with as many of the second round's GSM8K
    answers; a vocabulary of their own (FR-Spec, over both), each drafter started from `base_dir`'s
    weights (`remap_vocab`) and trained on the mix with the first round's loss; MaG's bigram table over
    both. Returns the held-out agreement on each source, before (the GSM8K drafter) and after."""
    from transformers import LlamaForCausalLM

    from .smollm2 import cache_root

    out_dir, base_dir, g = Path(out_dir), Path(base_dir), recipe["general"]
    root = Path(cache or cache_root()) / "smollm2"
    full, vocab, train_rows, (own_val, gsm_val), report = _general_data(recipe, root, data_dir, cache, progress,
                                                                        seed)
    table = local_ids(vocab, full)
    train_seqs = sequences(train_rows, table)
    val_seqs = sequences(own_val + gsm_val, table)
    teacher = SoftLabels(train_rows, train_seqs, table, recipe["seq_len"]) if recipe["distill"] > 0 else None
    for name, m in g["models"].items():
        if only and name not in only:
            continue
        base = base_dir / name
        old_vocab = json.loads((base / "vocab.json").read_text())["ids"]
        old_table = local_ids(old_vocab, full)
        start = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        before = {"requests": round(agreement(start, own_val, old_table, old_vocab), 4),
                  "gsm8k": round(agreement(start, gsm_val, old_table, old_vocab), 4)}
        remap_vocab(start, old_vocab, vocab)
        weights = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()[:12]
        work = root / f"general-{settings_key(**g, m=m, init=weights, vocab_ids=vocab, split_seed=seed)}"
        start.save_pretrained(work / f"{name}.init")
        config = {k: v for k, v in start.config.to_dict().items() if k in json.loads((base / "config.json").read_text())
                  and k not in ("architectures", "dtype", "transformers_version")}
        model, summary = _train_or_reuse(work / name, config, train_seqs, val_seqs, _train_config(m, recipe, seed),
                                         teacher, work / f"{name}.init", progress)
        after = {"requests": round(agreement(model, own_val, table, vocab), 4),
                 "gsm8k": round(agreement(model, gsm_val, table, vocab), 4)}
        dest = out_dir / name
        _install(work / name, dest, vocab, full)
        summary = {**summary, "init_from": f"smollm2/{name} (its vocabulary remapped)",
                   "general": {k: v for k, v in report.items() if k != "models"},
                   "recipe": {k: v for k, v in g.items() if k != "models"},
                   "agreement_val_before": before, "agreement_val": after}
        (dest / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        report["models"][name] = {"parameters": summary["parameters"], "val_loss": summary["val_loss"],
                                  "train_time_s": summary["train_time_s"], "agreement_val_before": before,
                                  "agreement_val": after}
        if progress:
            print(f"{name} (general): held-out agreement {before} -> {after}", flush=True)
    _save_bigram(train_rows, full, out_dir)
    if not (out_dir / "family.json").is_file():        # the base family's default until `csd tune` chooses one
        _general_family_json(out_dir, base_dir, g)
    return report


def _general_data(recipe: dict, root: Path, data_dir, cache, progress: bool, seed: int):
    """What `distill_general` trains on: the target's answers to the requests it wrote itself (cached in
    `root`; those sharing 8 words in a row with a Spec-Bench question dropped) and to as many GSM8K train
    questions from the second round's first, each source held out apart; the drafters' vocabulary over
    both. Returns (the target's vocabulary size, the vocabulary, the training rows, (held-out requests,
    held-out GSM8K answers), the report so far)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .datasets import load_gsm8k, load_spec_bench
    from .errors import MissingFileError
    from .smollm2 import target_dir

    g = recipe["general"]
    tdir = target_dir(cache, progress=progress)
    tok = AutoTokenizer.from_pretrained(tdir)
    origin = f"requests-seed{g['seed']}-{g['request_tokens']}"
    model = AutoModelForCausalLM.from_pretrained(tdir, dtype=getattr(torch, recipe["dtype"])).eval()
    requests = self_instructions(model, tok, g["requests"], root / origin, seed=g["seed"],
                                 max_new_tokens=g["request_tokens"], progress=progress)
    del model
    try:
        refs = [t for q in load_spec_bench(data_dir=data_dir) for t in q["turns"]]
    except MissingFileError:
        refs = []
    dropped = overlapping(requests, refs)
    requests = [r for i, r in enumerate(requests) if i not in set(dropped)]
    _, own_rows = answers_for(requests, tdir, recipe, cache, progress, origin=origin)
    first = recipe["more"]["questions"][0]
    questions = [x["question"] for x in load_gsm8k("train", data_dir)][first:first + g["gsm8k"]]
    _, gsm_rows = answers_for(questions, tdir, recipe, cache, progress, first=first)
    own_val, own_train = held_out(own_rows, recipe["val_fraction"], seed)
    gsm_val, gsm_train = held_out(gsm_rows, recipe["val_fraction"], seed)
    train_rows, full = own_train + gsm_train, len(tok)
    vocab = frequent_tokens(train_rows, recipe["vocab"],
                            keep=[t for t in _special_ids(tok).values() if t is not None], vocab_size=full)
    report = {"requests": len(requests), "requests_dropped_spec_bench_overlap": len(dropped),
              "spec_bench_checked": bool(refs), "gsm8k_questions": [first, first + len(gsm_rows)],
              "answer_tokens": {"requests": sum(len(r["answer"]) for r in own_rows),
                                "gsm8k": sum(len(r["answer"]) for r in gsm_rows)},
              "vocab_coverage_val": {"requests": round(coverage(own_val, vocab), 5),
                                     "gsm8k": round(coverage(gsm_val, vocab), 5)},
              "models": {}}
    return full, vocab, train_rows, (own_val, gsm_val), report


def _general_family_json(out_dir: Path, base_dir: Path, g: dict) -> None:
    """smollm2-general's family.json with the base family's default cascade (a toy base has none: zoo's
    default cascade then), until `csd tune` chooses one for these drafters."""
    base_info = base_dir / "family.json"
    info = json.loads(base_info.read_text()) if base_info.is_file() else {}
    info = {"name": out_dir.name, "target": "smollm2", "prompt": "chat", "drafters": list(g["models"]),
            **{k: info[k] for k in ("default", "defaults") if k in info},
            "default_from": f"{base_dir.name}'s (not tuned for these drafters yet)"}
    (out_dir / "family.json").write_text(json.dumps(info, indent=2) + "\n")
