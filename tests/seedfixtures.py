"""Stand-ins for the seed's models and data, written to a temporary folder (nothing is downloaded).

Tiny Llama / T5 models saved with save_pretrained under the seed's model names (mapped through
`model_paths`), a small byte-level BPE tokenizer, a bigram table in the seed's format (a JSON list of
next-token ids), and made-up GSM8K / MMLU items in the hub's schemas.
"""

import json
from pathlib import Path

import tiny

VOCAB = 300

TEXTS = ["Tom has 3 boxes with 4 pens in each box. How many pens does Tom have?",
         "A train travels 60 miles per hour for 2 hours. How far does it go?",
         "Which planet is known as the red planet? Mars, Venus, Jupiter or Saturn.",
         "Question: Answer: Let's think step by step. Reason the math question below."]

GSM8K_ITEMS = [{"question": "Ann buys 2 apples at 3 dollars each. How much does she pay",
                "answer": "2 * 3 = 6\n#### 6"},
               {"question": "A box holds 5 pens. How many pens are in 4 boxes",
                "answer": "5 * 4 = 20\n#### 20"},
               {"question": "Sam reads 7 pages a day for 3 days. How many pages does he read",
                "answer": "7 * 3 = 21\n#### 21"},
               {"question": "Mia has 10 stickers and gives away 4. How many are left",
                "answer": "10 - 4 = 6\n#### 6"}]

MMLU_ITEMS = [{"question": f"Made-up question number {i}: which option is {c}?", "subject": s,
               "choices": [f"option {c}{j}" for j in range(4)], "answer": i % 4}
              for i, (c, s) in enumerate(zip("abcdefgh", ["anatomy", "virology", "astronomy", "marketing"] * 2))]

# The seed's README configs, verbatim, plus its gsm8k variant.
FLAN_T5_PARAMS = {
    'draft_names': ['google/flan-t5-base', 'google/flan-t5-small'],
    'target_name': 'google/flan-t5-xxl',
    'is_decoder_only': False,
    'use_mag': True,
    'k_matrix': [[5, 14, 10], [0, 1, 10], [0, 0, 10]],
    'lenience': 2,
    'dataset': 'mmlu',
    'counter_version': 'model_parameters',
    'sample': False
}
FLAN_T5_PREVIOUS = {
    'draft_names': ['google/flan-t5-base', 'google/flan-t5-small'],
    'target_name': 'google/flan-t5-xxl',
    'is_decoder_only': False,
    'use_mag': True,
    'k_matrix': [[5, 8, 10], [0, 1, 10], [0, 0, 10]],
    'lenience': 5,
    'dataset': 'sampled_mmlu',
    'counter_version': 'previous_work',
    'sample': False
}
LLAMA = {
    'draft_names': ['JackFram/llama-160m'],
    'target_name': 'llama_7b',
    'is_decoder_only': True,
    'use_mag': True,
    'k_matrix': [[13, 10], [0, 10]],
    'lenience': 3,
    'dataset': 'mmlu',
    'counter_version': 'model_parameters',
    'sample': False
}
LLAMA_GSM8K = dict(LLAMA, dataset='gsm8k')


def write_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 3, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
    assert len(hf) <= VOCAB
    hf.save_pretrained(out)
    return hf


def write_models(root: Path) -> dict:
    """Tiny stand-ins for the seed's models; returns model_paths (seed name -> directory)."""
    paths = {}
    specs = {"google/flan-t5-xxl": ("t5", 0, 32), "google/flan-t5-base": ("t5", 1, 16),
             "google/flan-t5-small": ("t5", 2, 16), "llama_7b": ("llama", 3, 32),
             "JackFram/llama-160m": ("llama", 4, 16)}
    for name, (kind, seed, width) in specs.items():
        d = root / name.replace("/", "__")
        if kind == "t5":
            model = tiny.t5(seed, d_model=width, vocab=VOCAB, eos=1)
        else:
            model = tiny.llama(seed, hidden=width, vocab=VOCAB, eos=1, max_pos=512)
        model.save_pretrained(d)
        write_tokenizer(d)
        paths[name] = d
    return paths


def write_bigram(path: Path) -> Path:
    path.write_text(json.dumps([(t * 7 + 3) % VOCAB for t in range(VOCAB)]))   # the seed's format
    return path


def write_data(root: Path) -> Path:
    for name, items in (("gsm8k/dev.jsonl", GSM8K_ITEMS), ("mmlu/test.jsonl", MMLU_ITEMS)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps(i) + "\n" for i in items))
    return root
