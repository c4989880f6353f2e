"""Dataset loaders and the seed's prompt templates.

GSM8K (Cobbe et al. 2021, OpenAI, MIT licence) is never shipped with this project. It is read from a
local directory laid out as ``<data_dir>/gsm8k/{train,dev,test}.jsonl`` (one JSON object per line with
the fields ``question`` and ``answer``), found in this order:

1. the ``data_dir`` argument;
2. the environment variable ``CSD_DATA_DIR`` (a folder containing ``gsm8k/``);
3. ``../shared/datasets`` next to the repository root, if it exists.

A folder given explicitly (``data_dir`` or ``$CSD_DATA_DIR``) must hold the split: if it does not, that
is an error (never a silent switch to other data). With no folder given and none found, the loaders
read the Hugging Face hub (``datasets.load_dataset("openai/gsm8k", "main")``; ``dev`` = the first 300
items of ``test``); when the hub is unreachable (offline, ``HF_HUB_OFFLINE=1``) they fail at once with
one message saying what was looked for, where, and how to point ``CSD_DATA_DIR`` / ``--data-dir`` at it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .errors import CSDValueError, MissingFileError

__all__ = [
    "GSM8K_TEMPLATE",
    "DEV_SIZE",
    "TUNE_OFFSET",
    "gsm8k_dir",
    "gsm8k_prompt",
    "load_gsm8k",
    "gsm8k_final_answer",
]

#: The seed's GSM8K prompt template (note the trailing space after ``Answer:``).
GSM8K_TEMPLATE = "Reason the math question below step by step. Question: {question}.\n Answer: "

#: ``dev`` is the first ``DEV_SIZE`` items of GSM8K's test split.
DEV_SIZE = 300

#: Dev items from here on are for tuning (``csd tune``, the benchmarks' choice of a draft length), apart
#: from the first ones that ``csd run`` and the benchmarks measure.
TUNE_OFFSET = 250

_REPO_ROOT = Path(__file__).resolve().parent.parent
_SPLITS = ("train", "dev", "test")


def gsm8k_prompt(question: str) -> str:
    """The seed's prompt for one GSM8K question."""
    return GSM8K_TEMPLATE.format(question=question)


def _candidate_dirs(data_dir=None) -> list[Path]:
    """Folders that may hold the GSM8K jsonl files, in order of preference."""
    cands: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        cands += [d / "gsm8k", d]  # a folder containing gsm8k/, or the gsm8k folder itself
    else:
        env = os.environ.get("CSD_DATA_DIR")
        if env:
            d = Path(env).expanduser()
            cands += [d / "gsm8k", d]
        cands.append(_REPO_ROOT.parent / "shared" / "datasets" / "gsm8k")
    return cands


def gsm8k_dir(data_dir=None) -> Path | None:
    """The local GSM8K folder (holding ``train.jsonl`` etc.), or ``None`` if there is none.

    ``data_dir`` (or ``$CSD_DATA_DIR``) may be the folder containing ``gsm8k/`` or ``gsm8k/`` itself.
    """
    for d in _candidate_dirs(data_dir):
        if d.is_dir() and any((d / f"{s}.jsonl").is_file() for s in _SPLITS):
            return d.resolve()
    return None


def _explicit_dir(data_dir=None) -> tuple[str, Path] | None:
    """("data_dir", folder) or ("CSD_DATA_DIR", folder) when the user named a folder, else None."""
    if data_dir is not None:
        return "data_dir", Path(data_dir).expanduser()
    env = os.environ.get("CSD_DATA_DIR")
    return ("CSD_DATA_DIR", Path(env).expanduser()) if env else None


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be used now (None if it can): offline mode or no connection."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as e:
        return f"huggingface.co is unreachable ({e})"
    return None


def _not_found(what: str, looked, layout: str, reason: str) -> MissingFileError:
    return MissingFileError(
        f"{what} not found: looked for {', '.join(str(p) for p in looked)}; {reason}. Fix: pass "
        f"data_dir= (csd: --data-dir DIR) or set CSD_DATA_DIR to a folder that contains {layout}.")


def _from_hub(what: str, looked, layout: str, load, data_dir=None):
    """`load()` from the hub, or one clear MissingFileError at once when it cannot be reached (or when the
    data folder was given explicitly: then the hub is not tried)."""
    explicit = _explicit_dir(data_dir)
    if explicit is not None:
        raise _not_found(what, looked, layout,
                         f"{explicit[0]} ({explicit[1]}) was given explicitly, so the hub is not tried")
    from datasets.exceptions import DatasetsError

    reason = _hub_unreachable()
    if reason is None:
        try:
            return load()
        except (OSError, DatasetsError) as e:   # connection / HTTP errors (OSError), dataset not found
            reason = f"the hub fallback failed: {e}"
    raise _not_found(what, looked, layout, f"no local copy, and {reason}")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_gsm8k(split: str = "train", data_dir=None) -> list[dict]:
    """GSM8K examples (dicts with ``question`` and ``answer``) for ``split`` in train/dev/test.

    Reads ``gsm8k/{split}.jsonl`` from the local folder (see :func:`gsm8k_dir`); ``dev`` falls back to
    the first 300 lines of a local ``test.jsonl``; otherwise the hub is tried.
    """
    if split not in _SPLITS:
        raise CSDValueError(f"split: unknown GSM8K split {split!r}; expected one of {_SPLITS}")
    d = gsm8k_dir(data_dir)
    if d is not None:
        f = d / f"{split}.jsonl"
        if f.is_file():
            return _read_jsonl(f)
        if split == "dev" and (d / "test.jsonl").is_file():
            return _read_jsonl(d / "test.jsonl")[:DEV_SIZE]
    layout = "gsm8k/{train,dev,test}.jsonl (fields 'question' and 'answer')"
    looked = [c / f"{split}.jsonl" for c in _candidate_dirs(data_dir)]

    def hub():
        import datasets as hf_datasets

        rows = hf_datasets.load_dataset("openai/gsm8k", "main")["train" if split == "train" else "test"]
        rows = [{"question": r["question"], "answer": r["answer"]} for r in rows]
        return rows[:DEV_SIZE] if split == "dev" else rows

    return _from_hub(f"GSM8K split {split!r}", looked, layout, hub, data_dir)


def gsm8k_final_answer(text: str) -> str | None:
    """The number after the last ``####`` in a GSM8K-style answer (commas, ``$`` stripped), or None."""
    import re

    m = re.findall(r"####\s*\$?\s*(-?[\d,]*\.?\d+)", text)
    if not m:
        return None
    s = m[-1].replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".") or "0"
    return s


# --------------------------------------------------------------------------------------------------
# MMLU (Hendrycks et al. 2021, MIT licence)
# --------------------------------------------------------------------------------------------------
#
# Read from ``<data_dir>/mmlu/{split}.jsonl`` (``data_dir`` argument, else ``$CSD_DATA_DIR``, else
# ``../shared/datasets``), one JSON object per line in the hub's (``cais/mmlu``) schema: ``question``,
# ``subject``, ``choices`` (four strings) and ``answer`` (0-3); else from the hub,
# ``datasets.load_dataset("cais/mmlu", "all", split=split)``. The seed read ``lukaemon/mmlu`` (fields
# ``input``, ``A``-``D``, ``target``); :func:`mmlu_prompt` accepts both schemas.

#: The seed's MMLU prompt. The seed's README gives none; this is ``template_mmlu`` from the seed's code
#: (``csd_datasets.py``), with the trailing space after "step." kept.
MMLU_TEMPLATE = "Question: {question}\n(A) {A} (B) {B} (C) {C} (D) {D}\n Answer: \n Let's think step by step. "

#: Size of :func:`sampled_mmlu`. The seed's ``sampled_mmlu.json`` was never published, so its size is
#: unknown; 500 items is our choice.
SAMPLED_MMLU_SIZE = 500
MMLU_SPLITS = ("test", "validation", "dev", "auxiliary_train")


def mmlu_prompt(item: dict) -> str:
    """The seed's prompt for one MMLU item (hub schema ``question``/``choices``, or the seed's
    ``input``/``A``-``D``)."""
    if "choices" in item:
        choices = list(item["choices"])
        if len(choices) != 4:
            raise CSDValueError(f"item: an MMLU item needs 4 choices, got {len(choices)}")
        return MMLU_TEMPLATE.format(question=item["question"], **dict(zip("ABCD", choices)))
    return MMLU_TEMPLATE.format(question=item["input"], **{c: item[c] for c in "ABCD"})


def _mmlu_dirs(data_dir=None) -> list[Path]:
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        return [d / "mmlu", d]
    env = os.environ.get("CSD_DATA_DIR")
    dirs = [Path(env).expanduser() / "mmlu"] if env else []
    return dirs + [_REPO_ROOT.parent / "shared" / "datasets" / "mmlu"]


def load_mmlu(split: str = "test", data_dir=None) -> list[dict]:
    """MMLU items (``question``, ``subject``, ``choices``, ``answer``) of ``split``, all subjects."""
    if split not in MMLU_SPLITS:
        raise CSDValueError(f"split: unknown MMLU split {split!r}; expected one of {MMLU_SPLITS}")
    for d in _mmlu_dirs(data_dir):
        if (d / f"{split}.jsonl").is_file():
            return _read_jsonl(d / f"{split}.jsonl")
    layout = "mmlu/{split}.jsonl (fields 'question', 'subject', 'choices', 'answer')"
    looked = [d / f"{split}.jsonl" for d in _mmlu_dirs(data_dir)]

    def hub():
        import datasets as hf_datasets

        rows = hf_datasets.load_dataset("cais/mmlu", "all", split=split)
        return [{k: r[k] for k in ("question", "subject", "choices", "answer")} for r in rows]

    return _from_hub(f"MMLU split {split!r}", looked, layout, hub, data_dir)


def sampled_mmlu(n: int = SAMPLED_MMLU_SIZE, seed: int = 0, split: str = "test", data_dir=None) -> list[dict]:
    """The seed's ``sampled_mmlu``: a fixed random subset of ``n`` MMLU items (seeded; dataset order)."""
    import random

    items = load_mmlu(split, data_dir)
    picked = sorted(random.Random(seed).sample(range(len(items)), min(n, len(items))))
    return [items[i] for i in picked]


__all__ += ["MMLU_TEMPLATE", "SAMPLED_MMLU_SIZE", "mmlu_prompt", "load_mmlu", "sampled_mmlu"]


def prompt_texts(dataset: str, split: str, data_dir=None, n: int | None = None, chat: bool = False) -> list[str]:
    """The seed's prompts for the first `n` items of `dataset` (gsm8k | mmlu | sampled_mmlu; the
    fixed sampled_mmlu subset is drawn from MMLU's test split whatever `split` says). `chat`: the text of
    the user's turn for a chat model instead (GSM8K: the question itself; MMLU: the seed's prompt)."""
    if dataset == "gsm8k":
        texts = [x["question"] if chat else gsm8k_prompt(x["question"]) for x in load_gsm8k(split, data_dir)]
    elif dataset == "mmlu":
        texts = [mmlu_prompt(x) for x in load_mmlu(split, data_dir)]
    elif dataset == "sampled_mmlu":
        texts = [mmlu_prompt(x) for x in sampled_mmlu(data_dir=data_dir)]
    else:
        raise CSDValueError(f"dataset: expected gsm8k, mmlu or sampled_mmlu, got {dataset!r}")
    return texts if n is None else texts[:n]


__all__ += ["prompt_texts"]


# --------------------------------------------------------------------------------------------------
# Spec-Bench (Xia et al., ACL 2024 Findings; hemingkx/Spec-Bench, Apache-2.0): 480 prompts in six groups
# --------------------------------------------------------------------------------------------------

#: Spec-Bench's columns, in its tables' order, and the question categories each one holds (MT-bench's
#: eight two-turn categories form "Multi-turn Conversation")
SPEC_BENCH_GROUPS = {
    "Multi-turn Conversation": ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                "humanities"),
    "Translation": ("translation",),
    "Summarization": ("summarization",),
    "QA": ("qa",),
    "Math Reasoning": ("math_reasoning",),
    "RAG": ("rag",),
}
#: the short names `--categories` takes, one per group
SPEC_BENCH_NAMES = {"mt-bench": "Multi-turn Conversation", "translation": "Translation",
                    "summarization": "Summarization", "qa": "QA", "math_reasoning": "Math Reasoning", "rag": "RAG"}


def spec_bench_file(data_dir=None) -> Path:
    """``spec_bench/question.jsonl`` under ``data_dir``, else ``$CSD_DATA_DIR``, else ``../shared/datasets``
    next to the repository (a MissingFileError naming the file when it is not there: Spec-Bench is not
    on the Hugging Face hub as a dataset; its file is ``data/spec_bench/question.jsonl`` of
    hemingkx/Spec-Bench)."""
    explicit = _explicit_dir(data_dir)
    base = explicit[1] if explicit is not None else _REPO_ROOT.parent / "shared" / "datasets"
    looked = [base / "spec_bench" / "question.jsonl", base / "question.jsonl"]
    for f in looked:
        if f.is_file():
            return f.resolve()
    raise MissingFileError(
        f"Spec-Bench not found: looked for {', '.join(map(str, looked))}. Fix: put Spec-Bench's "
        f"data/spec_bench/question.jsonl (github.com/hemingkx/Spec-Bench) in <DIR>/spec_bench/ and pass "
        f"data_dir= (csd: --data-dir DIR) or set CSD_DATA_DIR=DIR.")


def load_spec_bench(categories=None, per_category: int | None = None, data_dir=None) -> list[dict]:
    """Spec-Bench's questions in file order: dicts with ``question_id``, ``category`` (the file's),
    ``group`` (Spec-Bench's column, `SPEC_BENCH_GROUPS`) and ``turns`` (the user's turns: two for
    MT-bench). `categories`: group short names (`SPEC_BENCH_NAMES`: mt-bench, translation, summarization,
    qa, math_reasoning, rag), as a list or comma-separated (`--categories`); None or "all": every group; `per_category`: N questions of each group, evenly spaced in
    it (so that N of MT-bench's 80 cover its eight categories alike)."""
    if isinstance(categories, str):
        categories = None if categories == "all" else [c.strip() for c in categories.split(",")]
    names = list(SPEC_BENCH_NAMES) if categories is None else list(categories)
    unknown = [c for c in names if c not in SPEC_BENCH_NAMES]
    if unknown or not names:
        raise CSDValueError(f"categories: expected some of {list(SPEC_BENCH_NAMES)}, got {names}")
    if per_category is not None and per_category < 1:
        raise CSDValueError(f"per_category: expected at least 1, got {per_category}")
    group_of = {c: g for g, cats in SPEC_BENCH_GROUPS.items() for c in cats}
    wanted = {SPEC_BENCH_NAMES[c] for c in names}
    rows = _read_jsonl(spec_bench_file(data_dir))
    members: dict[str, list[int]] = {g: [] for g in wanted}
    for i, row in enumerate(rows):
        group = group_of.get(row.get("category"))
        if group is None or not row.get("turns"):
            raise CSDValueError(f"Spec-Bench: question {row.get('question_id')} has an unknown category "
                                f"{row.get('category')!r} or no turns")
        if group in wanted:
            members[group].append(i)
    keep = set()
    for group, idx in members.items():
        n = len(idx) if per_category is None else min(per_category, len(idx))
        keep.update(idx[j * len(idx) // n] for j in range(n))
    return [{"question_id": rows[i]["question_id"], "category": rows[i]["category"],
             "group": group_of[rows[i]["category"]], "turns": list(rows[i]["turns"])} for i in sorted(keep)]


def spread(items: list[dict]) -> list[dict]:
    """The questions in an order whose every prefix covers the groups alike, and each group's whole range
    (a run cut short, e.g. by a time box, measures such a prefix): round-robin over the groups, each group's
    questions in bit-reversed order (its 1st, middle, quarter, three quarters, ...)."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["group"], []).append(item)

    def bit_reversed(n: int) -> list[int]:
        bits = max(1, (n - 1).bit_length())
        return sorted(range(n), key=lambda j: int(format(j, f"0{bits}b")[::-1], 2))

    queues = [[g[j] for j in bit_reversed(len(g))] for g in groups.values()]
    return [q[r] for r in range(max(map(len, queues), default=0)) for q in queues if r < len(q)]


__all__ += ["SPEC_BENCH_GROUPS", "SPEC_BENCH_NAMES", "spec_bench_file", "load_spec_bench", "spread"]
