"""The embedded model families, loaded offline: "gsm8k-tiny" (and "gsm8k-base").

    from csdlib import zoo
    fam = zoo.load()                     # Family: .tokenizer, .target, .drafters (mid, small, MaG), .k_matrix
    out = csdlib.generate(fam.target, fam.drafters, fam.prompt_ids("..."), k_matrix=fam.k_matrix,
                          lenience=fam.lenience)
    tok, models = zoo.load_family()      # the HF models: {"target": ..., "mid": ..., "small": ...}

The weights were trained by the recipe in ``csdlib.recipe`` (see its docstring); its training
functions are re-exported here, and the command line below runs it::

    python -m csdlib.zoo train [--family gsm8k-tiny|gsm8k-base] [--out DIR] [--budget full|toy] [--data-dir DIR]
    python -m csdlib.zoo bigram | tune | bench

`from_paths` builds the same `Family` from model directories (what ``csd run --target ...`` uses).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .datasets import gsm8k_prompt
from .errors import CSDValueError, MissingFileError
from .recipe import (BASE_BUDGETS, BIGRAM_FILE, BUDGETS, DEFAULT_BASE_DIR, DEFAULT_FAMILY_DIR, FAMILY,  # noqa: F401
                     MODEL_NAMES, build_bigram_table, build_model, count_parameters, tokenize_examples,
                     train_base, train_family, train_model, train_tokenizer)

FAMILY_DIRS = {"gsm8k-tiny": DEFAULT_FAMILY_DIR, "gsm8k-base": DEFAULT_BASE_DIR}
#: what ``load()``, ``csd run`` / ``calibrate`` / ``tune`` and the notebooks use when no family is named
DEFAULT_FAMILY = "gsm8k-tiny"


def load_family(path=None, dtype=torch.float32):
    """``(tokenizer, {"target": model, "mid": model, "small": model})`` from a trained family folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import quiet_loading

    path = Path(path) if path is not None else DEFAULT_FAMILY_DIR
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    models = {}
    with quiet_loading():
        for name in MODEL_NAMES:
            models[name] = AutoModelForCausalLM.from_pretrained(path / name, dtype=dtype).eval()
    return tok, models


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

    def __repr__(self) -> str:
        names = ", ".join(d.name for d in self.drafters)
        return f"Family({self.name!r}: target + [{names}], k_matrix={self.k_matrix}, lenience={self.lenience})"

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the seed's GSM8K prompt for `question`, exactly as in training (``<s>`` first)."""
        return self.tokenizer(gsm8k_prompt(question))["input_ids"]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load(name: str | None = None, path=None, mag_k: int | None = None, dtype=torch.float32,
         float32_logits: bool | None = None, device=None) -> Family:
    """An embedded family (default: ``DEFAULT_FAMILY``), offline: ``.tokenizer``, ``.target`` and ``.drafters`` (`csdlib` models,
    largest first, MaG last) and the default ``.k_matrix`` / ``.lenience`` chosen by measurement (stored
    in ``family.json``).

    - ``gsm8k-tiny``: target (4.5 M) drafted for by mid (0.95 M), small (0.32 M) and MaG;
    - ``gsm8k-base``: a 29 M target drafted for by gsm8k-tiny's target (named ``tiny``), mid, small and
      MaG (a 4-level cascade); it shares gsm8k-tiny's tokenizer, weights and bigram table.

    ``dtype``: every model's (``torch.bfloat16``, ``"bfloat16"``, ...); ``float32_logits``: the target's
    output layer in float32 (`csdlib.precision`; default: on for a half-precision dtype); ``device``:
    ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:0"``...
    """
    from .precision import default_float32_logits
    from .precision import float32_logits as with_float32_logits

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    float32_logits = default_float32_logits(dtype) if float32_logits is None else float32_logits
    from transformers import AutoModelForCausalLM

    from .mag import BigramTable, MaG
    from .models import HFModel, quiet_loading

    name = DEFAULT_FAMILY if name is None and path is None else name
    if name not in FAMILY_DIRS and path is None:
        raise CSDValueError(f"name: unknown family {name!r}; the embedded ones are {list(FAMILY_DIRS)} "
                            f"(or give path=)")
    path = Path(path) if path is not None else FAMILY_DIRS[name]
    if not (path / "family.json").is_file():
        hint = (f"; train it with `python -m csdlib.zoo train --family {name}`" if name in FAMILY_DIRS and path
                == FAMILY_DIRS[name] else "")
        raise MissingFileError(f"name: family {name!r} has no {path / 'family.json'} (not trained yet){hint}")
    info = json.loads((path / "family.json").read_text())
    if "shares" in info:  # gsm8k-base: its own target on top of another family's models
        tiny_path = (path / info["shares"]).resolve()
        tok, models = load_family(tiny_path, dtype=dtype)
        with quiet_loading():
            base = AutoModelForCausalLM.from_pretrained(path / "target", dtype=dtype).eval()
        hf = {"target": base, "tiny": models["target"], "mid": models["mid"], "small": models["small"]}
        bigram = tiny_path / BIGRAM_FILE
        fallback = [[1, 1, 0, 2], [0, 1, 0, 2], [0, 0, 1, 2], [0, 0, 0, 2]]
    else:
        tok, hf = load_family(path, dtype=dtype)
        bigram = path / BIGRAM_FILE
        fallback = [[2, 1, 0], [0, 1, 0], [0, 0, 2]]
    default = info.get("default", {"k_matrix": fallback, "lenience": 1.0, "mag_k": 10})
    vocab = hf["target"].config.vocab_size
    mag = MaG(BigramTable.load(bigram, vocab_size=vocab), k=mag_k or default["mag_k"])
    if float32_logits:
        with_float32_logits(hf["target"])
    if device is not None:
        hf = {n: m.to(resolve_device(device)) for n, m in hf.items()}
    target = HFModel(hf.pop("target"), name="target")
    drafters = [*(HFModel(m, name=n) for n, m in hf.items()), mag]
    return Family(info.get("name", name), path, tok, target, drafters, default["k_matrix"], default["lenience"],
                  bigram)


def resolve_device(device=None) -> torch.device:
    """``"auto"`` or None: CUDA when present, else the CPU; anything else as ``torch.device`` reads it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def from_paths(target, drafters, *, bigram=None, mag_k: int = 10, tokenizer=None, k_matrix, lenience=1.0,
               dtype=None, device=None, device_map=None, name: str = "custom") -> Family:
    """A `Family` from model directories (or hub ids): decoder-only or encoder-decoder, detected from
    the config; MaG from `bigram` as the last drafter; the tokenizer from `tokenizer` or the target."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from .mag import BigramTable, MaG
    from .models import HFModel, quiet_loading

    def hf(path, **kw):
        try:
            enc_dec = AutoConfig.from_pretrained(path).is_encoder_decoder
        except OSError as e:
            raise CSDValueError(f"model: cannot load {str(path)!r} ({e})") from None
        auto = AutoModelForSeq2SeqLM if enc_dec else AutoModelForCausalLM
        kw = {k: v for k, v in kw.items() if v is not None}
        with quiet_loading():
            model = auto.from_pretrained(path, dtype=dtype, **kw).eval()
        return model if "device_map" in kw or device is None else model.to(device)

    tm = HFModel(hf(target, device_map=device_map), name=Path(target).name)
    ds = [HFModel(hf(p), name=Path(p).name) for p in drafters]
    if bigram:
        ds.append(MaG(BigramTable.load(bigram, vocab_size=tm.vocab_size), k=mag_k))
    tok = AutoTokenizer.from_pretrained(tokenizer or target)
    return Family(name, None, tok, tm, ds, k_matrix, lenience, Path(bigram) if bigram is not None else None)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m csdlib.zoo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the gsm8k-tiny family (resumes: skips trained models)")
    t.add_argument("--family", choices=list(FAMILY_DIRS), default="gsm8k-tiny")
    t.add_argument("--out", default=None, help="family folder (default: data/models/<family>)")
    t.add_argument("--budget", choices=list(BUDGETS), default="full")
    t.add_argument("--data-dir", default=None, help="folder containing gsm8k/ (default: $CSD_DATA_DIR)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    t.add_argument("--only", nargs="*", choices=MODEL_NAMES, default=None)
    bch = sub.add_parser("bench", help="measure training throughput of each family member")
    bch.add_argument("--data-dir", default=None)
    bch.add_argument("--seconds", type=float, default=30.0)
    bch.add_argument("--threads", type=int, default=1)
    bch.add_argument("--json", default=None, help="write the result to this JSON file")
    bg = sub.add_parser("bigram", help="build MaG's bigram table from the training text")
    bg.add_argument("--out", default=str(DEFAULT_FAMILY_DIR))
    bg.add_argument("--data-dir", default=None)
    tn = sub.add_parser("tune", help="choose the default k-matrix / lenience by measured SWI")
    tn.add_argument("--data-dir", default=None)
    tn.add_argument("--prompts", type=int, default=8)
    for q in (bg, tn):
        q.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.cmd == "tune":                      # the run layer, imported only for this command
        from .tuning import tune_default
    elif a.cmd == "bench":
        from .bench import bench_throughput
    if a.cmd == "bigram":
        print(build_bigram_table(a.out, a.data_dir))
    elif a.cmd == "tune":
        best, _ = tune_default(data_dir=a.data_dir, n_prompts=a.prompts)
        print("default:", best)
    elif a.cmd == "train" and a.family == "gsm8k-base":
        train_base(a.out, a.data_dir, a.budget, a.seed)
    elif a.cmd == "train":
        train_family(a.out or DEFAULT_FAMILY_DIR, a.data_dir, a.budget, a.seed, only=a.only)
    elif a.cmd == "bench":
        res = bench_throughput(a.data_dir, a.seconds)
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
