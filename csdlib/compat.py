"""The seed's API and config dicts, on top of csdlib.

- `run_config(config, ...)` runs one of the seed's `main.py` config dicts, exactly as its README writes
  them (`draft_names`, `target_name`, `is_decoder_only`, `use_mag`, `k_matrix`, `lenience`, `dataset`,
  `counter_version`, `sample`), and returns the per-sample results as a DataFrame (AR and CSD on the
  same prompts; see `csdlib.experiment`). `swi` is the SWI under the config's `counter_version`.
- `csd(...)`, `CSDraftingDecoderModel`, `CSDraftingEncoderDecoderModel` and `get_mag_model(...)` have
  the seed's signatures, so the seed's "Using CS Drafting for inference" snippet runs with only its
  import lines changed (`from csdlib.compat import csd, CSDraftingDecoderModel, get_mag_model`).

Differences from the seed, on purpose: generation stops right after the target's EOS (taken from the
model's config, not guessed from its name) and the output is exactly the target's greedy output; the
seed's `vocab_size=32000` and `is_decoder_only` arguments are accepted but the vocabulary comes from the
model's config and the bigram table's length; a config's `sample: True` runs speculative sampling
(`csdlib.generate(do_sample=True, seed=0)`, which requires lenience 1), while the seed's model classes,
greedy only in the seed, refuse `sample=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cascade import generate
from .errors import CSDValueError
from .experiment import Method, run
from .mag import BigramTable, MaG
from .models import HFModel, as_model

SEED_CONFIG_KEYS = ("draft_names", "target_name", "is_decoder_only", "use_mag", "k_matrix", "lenience",
                    "dataset", "counter_version", "sample")
DATASETS = ("gsm8k", "mmlu", "sampled_mmlu")
COUNTER_VERSIONS = ("model_parameters", "previous_work")
MAG_K = 10          # the seed's _MAG_GENERATION


# ---------------------------------------------------------------- the seed's model classes


class _SeedModel(HFModel):
    expects_encoder_decoder = False

    def __init__(self, model, sample=False, name="", vocab_size=None, counter_version="model_parameters"):
        if bool(getattr(model.config, "is_encoder_decoder", False)) != self.expects_encoder_decoder:
            other = "CSDraftingEncoderDecoderModel" if not self.expects_encoder_decoder else "CSDraftingDecoderModel"
            raise CSDValueError(f"model: {type(self).__name__} got a {type(model).__name__}; use {other}")
        if sample:
            raise CSDValueError("sample: the seed's models only decode greedily; for speculative sampling "
                                "call csdlib.generate(..., do_sample=True)")
        super().__init__(model, name=name or None)
        self.sample, self.counter_version = sample, counter_version

    def cuda(self, device=None):
        self.model.cuda(device)
        return self

    def to(self, device):
        self.model.to(device)
        return self

    def cpu(self):
        self.model.cpu()
        return self


class CSDraftingDecoderModel(_SeedModel):
    """The seed's wrapper of an `AutoModelForCausalLM` (an `HFModel` with a KV cache)."""


class CSDraftingEncoderDecoderModel(_SeedModel):
    """The seed's wrapper of an `AutoModelForSeq2SeqLM` (an `HFModel`; encoder run once per prompt)."""
    expects_encoder_decoder = True


def get_mag_model(bi_gram_path, is_decoder_only=True) -> MaG:
    """MaG with the seed's bigram file (a JSON list of next-token ids) or ours; in seed mode: it proposes
    10 tokens per call whatever the k-matrix entry, as the seed's MaG does."""
    return MaG(BigramTable.load(bi_gram_path), k=MAG_K, name="mag", seed_mode=True)


def csd(draft_list, target_model, initial_input, input_ids, k_matrix, max_length=200, leniency=1):
    """The seed's entry point: greedy CS Drafting of at most `max_length` new tokens.

    `initial_input` is the tokenized prompt; `input_ids` is where decoding starts (the prompt again for
    decoder-only models, `[[decoder_start]]` for encoder-decoder ones). Returns the decoder sequence as a
    (1, L) tensor on the target's device (decoder-only: prompt + new tokens), like the seed.
    """
    target = as_model(target_model)
    ids = torch.as_tensor(input_ids).reshape(1, -1)
    if target.is_encoder_decoder:
        if ids.tolist() != [[target.decoder_start_token_id]]:
            raise CSDValueError(f"input_ids: expected [[{target.decoder_start_token_id}]] (the decoder start) "
                                f"for an encoder-decoder target, got {ids.tolist()}")
        prompt = initial_input
    else:
        prompt = ids
    out = generate(target, draft_list, prompt, k_matrix=k_matrix, lenience=leniency, max_new_tokens=max_length)
    return out.sequences.to(target.device)


# ---------------------------------------------------------------- the seed's config dicts


def check_config(config: dict) -> dict:
    """The seed's config dict, checked: exactly its keys, known dataset and counter_version."""
    if not isinstance(config, dict):
        raise CSDValueError(f"config: expected a dict with keys {SEED_CONFIG_KEYS}, got {type(config).__name__}")
    missing = [k for k in SEED_CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in SEED_CONFIG_KEYS]
    if missing or unknown:
        raise CSDValueError(f"config: missing keys {missing}, unknown keys {unknown}; expected {SEED_CONFIG_KEYS}")
    if config["dataset"] not in DATASETS:
        raise CSDValueError(f"config['dataset']: expected one of {DATASETS}, got {config['dataset']!r}")
    if config["counter_version"] not in COUNTER_VERSIONS:
        raise CSDValueError(f"config['counter_version']: expected one of {COUNTER_VERSIONS}, "
                            f"got {config['counter_version']!r}")
    if not isinstance(config["draft_names"], (list, tuple)):
        raise CSDValueError(f"config['draft_names']: expected a list of model names, got {config['draft_names']!r}")
    return dict(config)


def load_hf_model(name: str, is_decoder_only: bool, model_paths=None, **kwargs):
    """`AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` from `model_paths[name]` if given, else the hub
    (`csdlib.zoo.load_model`; kwargs go to `from_pretrained`, e.g. `device_map="auto"`, `dtype=torch.float16`)."""
    from .zoo import load_model

    source = str((model_paths or {}).get(name, name))
    try:
        return load_model(source, decoder_only=is_decoder_only, **kwargs)
    except CSDValueError as e:
        raise CSDValueError(f"model {name!r}: {str(e).removeprefix('model: ')}; map the name to a local "
                            "directory with model_paths={name: path}") from None


def load_tokenizer(names, model_paths=None):
    """The first of `names` (target first) whose directory / hub id holds a tokenizer."""
    from transformers import AutoTokenizer

    errors = []
    for name in names:
        try:
            return AutoTokenizer.from_pretrained(str((model_paths or {}).get(name, name)))
        except (OSError, ValueError) as e:
            errors.append(f"{name}: {e}")
    raise CSDValueError("tokenizer: none of the models has one: " + "; ".join(errors))


def dataset_prompts(dataset: str, data_dir=None, n_samples=None) -> list[str]:
    """The seed's prompts for `dataset` (gsm8k: the test split - its first 300 items are our `dev`)."""
    from . import datasets as ds

    split = "test" if dataset != "gsm8k" or n_samples is None or n_samples > ds.DEV_SIZE else "dev"
    return ds.prompt_texts(dataset, split, data_dir, n_samples)


def run_config(config: dict, *, model_paths=None, bigram_path=None, data_dir=None, n_samples=None, out=None,
               max_new_tokens: int = 200, progress: bool = True, **load_kwargs):
    """Run the seed's config dict: AR and CSD on the dataset's prompts; per-sample results as a DataFrame.

    Args:
        config: the seed's dict (see `SEED_CONFIG_KEYS`).
        model_paths: {model name: local directory}; names not in it are loaded from the hub.
        bigram_path: MaG's bigram table (the seed's JSON list or ours); required when `use_mag`.
        data_dir: where datasets are read (see `csdlib.datasets`).
        n_samples: the first n prompts (default: all).
        out: JSONL results file (resumable); None keeps results in memory only.
        max_new_tokens: the seed's `max_length` (200).
        load_kwargs: passed to `from_pretrained` (e.g. `device_map="auto"`).
    """
    cfg = check_config(config)
    if cfg["use_mag"] and bigram_path is None:
        raise CSDValueError("bigram_path: config['use_mag'] is True but no bigram table was given; pass the "
                            "seed's table (e.g. bigram_models/wiki_bigram_naive_bayers_greedy_next_token.json) "
                            "or one built with csdlib.BigramTable.from_sequences(...).save(path)")
    decoder_only = bool(cfg["is_decoder_only"])
    target = HFModel(load_hf_model(cfg["target_name"], decoder_only, model_paths, **load_kwargs),
                     name=cfg["target_name"])
    drafters = [HFModel(load_hf_model(n, decoder_only, model_paths, **load_kwargs), name=n)
                for n in cfg["draft_names"]]
    if cfg["use_mag"]:
        drafters.append(get_mag_model(Path(bigram_path), decoder_only))
    tok = load_tokenizer([cfg["target_name"], *cfg["draft_names"]], model_paths)
    texts = dataset_prompts(cfg["dataset"], data_dir, n_samples)
    prompts = [(i, tok(t)["input_ids"]) for i, t in enumerate(texts)]
    limit = getattr(tok, "model_max_length", None)
    too_long = [(i, len(ids)) for i, ids in prompts if limit is not None and len(ids) > limit]
    if too_long:     # never shorten a prompt silently (the seed tokenized with truncation)
        i, n = too_long[0]
        raise CSDValueError(f"config['dataset']: prompt {i} of {cfg['dataset']!r} has {n} tokens, more than the "
                            f"tokenizer's model_max_length of {limit} ({len(too_long)} such prompt(s)); use a "
                            "model with a longer context or fewer / shorter prompts (n_samples)")
    sampling = {"do_sample": True, "seed": 0} if cfg["sample"] else {}
    methods = [Method("AR", generate_kwargs=sampling),
               Method("CSD", drafters, cfg["k_matrix"], cfg["lenience"], generate_kwargs=sampling)]
    df = run(target, methods, prompts, out=out, max_new_tokens=max_new_tokens, dataset=cfg["dataset"],
             progress=progress)
    column = f"swi.{cfg['counter_version']}"
    if column not in df:
        raise CSDValueError(f"config['counter_version']: the model names {[cfg['target_name'], *cfg['draft_names']]} "
                            f"do not all resolve in the {cfg['counter_version']!r} cost table")
    df["swi"] = df[column]
    return df
