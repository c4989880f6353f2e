"""The training recipe of the embedded model families "gsm8k-tiny" and "gsm8k-base": seeded, reproducible, CPU.

(Loading a trained family is `csdlib.zoo`; `python -m csdlib.zoo train ...` runs this recipe.)

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
Batches are whole examples (truncated to ``seq_len``), grouped by length to keep padding small, padded
on the right and masked; AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warm-up then
cosine decay to 10% of the peak learning rate, gradient clipping at 1.0. Embeddings are tied. Each
model is saved (``save_pretrained``, safetensors fp32) as soon as it is trained, with its loss log
(``loss_log.jsonl``, one JSON object per logging interval and one per epoch with the validation loss)
and ``training.json``; re-running the command skips models already trained in ``out_dir`` (resume).

Sizes (chosen by measurement, see ``FAMILY`` and ``data/models/gsm8k-tiny/throughput.json``)
are such that target:mid >= 4 and target:small >= 12 in parameters, and the whole family trains in
about an hour on one CPU thread. ``python -m csdlib.zoo bench`` (``csdlib.bench``) re-measures the training throughput.

Command::

    python -m csdlib.zoo train [--out data/models/gsm8k-tiny] [--budget full|toy] [--data-dir DIR]

Loading: ``csdlib.zoo.load()`` (the family as a cascade) or ``csdlib.zoo.load_family()`` (HF models).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch

from .datasets import gsm8k_prompt, load_gsm8k
from .errors import CSDValueError

__all__ = [
    "FAMILY",
    "BUDGETS",
    "MODEL_NAMES",
    "DEFAULT_FAMILY_DIR",
    "train_tokenizer",
    "tokenize_examples",
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

MAX_POSITION_EMBEDDINGS = 512

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
# Models
# --------------------------------------------------------------------------------------------------

def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_model(config_dict: dict, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` from a dict of ``LlamaConfig`` fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        hidden_act="silu",
    )
    cfg.update(config_dict)
    cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    config = LlamaConfig(**cfg)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def add_dropout(model, p: float) -> list:
    """Dropout with probability ``p`` on the token embeddings and on the output of every attention and
    MLP block (before it joins the residual stream), active in training mode only, as GPT-2 has it;
    ``LlamaForCausalLM`` has no such dropout of its own. Forward hooks, so nothing is saved with the
    weights: the trained model is a plain Llama. Returns the hook handles."""
    import torch.nn.functional as F

    def drop_first(module, args, out):
        return (F.dropout(out[0], p, module.training), *out[1:]) if isinstance(out, tuple) else \
            F.dropout(out, p, module.training)

    handles = [model.model.embed_tokens.register_forward_hook(drop_first)]
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(drop_first))
        handles.append(layer.mlp.register_forward_hook(drop_first))
    return handles


def _batches(seqs, batch: int, rng: random.Random, shuffle: bool = True):
    """Index batches of similar-length sequences (length-grouped within windows of 50 batches)."""
    idx = list(range(len(seqs)))
    if shuffle:
        rng.shuffle(idx)
    window = batch * 50
    out = []
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w:w + window], key=lambda i: len(seqs[i]))
        out += [chunk[b:b + batch] for b in range(0, len(chunk), batch)]
    if shuffle:
        rng.shuffle(out)
    return out


def _collate(seqs, ids, pad_id: int):
    n = max(len(seqs[i]) for i in ids)
    x = torch.full((len(ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for r, i in enumerate(ids):
        s = seqs[i]
        x[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    labels = x.masked_fill(mask == 0, -100)
    return x, mask, labels


def _kl_to_teacher(teacher, logits, x, mask):
    """Mean over the predicted tokens (those with a next token, as the cross-entropy has them) of
    KL(teacher || model) of the next-token distributions."""
    import torch.nn.functional as F

    with torch.no_grad():
        t_logp = torch.log_softmax(teacher(input_ids=x, attention_mask=mask).logits[:, :-1].float(), -1)
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    kl = F.kl_div(logp, t_logp, reduction="none", log_target=True).sum(-1)   # per position, nats
    keep = mask[:, 1:].bool()                              # the next token is a real one
    return kl[keep].mean()


@torch.no_grad()
def evaluate_loss(model, seqs, batch: int = 16, seq_len: int = 384, pad_id: int = 2) -> float:
    """Token-weighted mean cross-entropy (nats/token) of ``model`` on ``seqs``."""
    model.eval()
    seqs = [s[:seq_len] for s in seqs]
    total, count = 0.0, 0
    for ids in _batches(seqs, batch, random.Random(0), shuffle=False):
        x, mask, labels = _collate(seqs, ids, pad_id)
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]
        tgt = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), tgt.reshape(-1), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((tgt != -100).sum())
    model.train()
    return total / max(count, 1)


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with torch.save atomically (a crash mid-write keeps the previous checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_model(
    config_dict: dict,
    tokenized_train,
    tokenized_val,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    lr: float = 1e-3,
    batch: int = 16,
    seq_len: int = 384,
    seed: int = 0,
    out_dir=None,
    warmup: int = 100,
    log_every: int = 20,
    weight_decay: float = 0.1,
    min_lr_ratio: float = 0.1,
    progress: bool = True,
    max_seconds: float | None = None,
    checkpoint_every_s: float | None = 600.0,
    stop_after_steps: int | None = None,
    save_dtype: torch.dtype | None = None,
    init_from=None,
    dropout: float = 0.0,
    teacher=None,
    distill: float = 0.0,
):
    """Train a ``LlamaForCausalLM`` built from ``config_dict`` and save it to ``out_dir``.

    Give either ``epochs`` or ``steps``. Writes ``loss_log.jsonl`` (as it trains) and ``training.json``
    to ``out_dir``, computes the validation loss after every epoch and at the end, and saves the model
    with ``save_pretrained`` (safetensors; in ``save_dtype`` if given, e.g. bf16 for a large target).

    Interruption: every ``checkpoint_every_s`` seconds of training (and at the end of every epoch) the
    whole training state (model, optimizer, learning-rate schedule position, RNG states, the epoch's batch
    order and the position in it, counters, the log) goes to ``out_dir/checkpoint.pt``; calling again
    with the same arguments resumes from it and gives the same model as an uninterrupted run.
    ``stop_after_steps`` stops (after checkpointing) at that step as if interrupted (tests);
    ``max_seconds`` stops early (used by the micro-benchmark; nothing is saved then if ``out_dir`` is
    None). ``init_from`` (a saved model folder) starts from those weights instead of a fresh
    initialisation (a warm restart: a new schedule on a trained model). Returns ``(model, summary_dict)``;
    ``summary["complete"]`` is False when stopped early. ``dropout`` > 0 adds dropout while training
    (``add_dropout``). ``distill`` > 0 mixes in knowledge distillation from ``teacher`` (a causal LM with
    the same vocabulary, kept frozen): loss = (1 - distill) * cross-entropy + distill * KL(teacher ||
    model), per token, over the same tokens (Hinton et al., 2015, at temperature 1).
    """
    from tqdm.auto import tqdm

    pad_id = int(config_dict.get("pad_token_id", 2))
    if not 0.0 <= distill <= 1.0 or (distill > 0) != (teacher is not None):
        raise CSDValueError(f"distill: a weight in [0, 1] with a teacher model, or 0 without one; got "
                            f"{distill} and {'a' if teacher is not None else 'no'} teacher")
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    rng = random.Random(seed)
    train = [s[:seq_len] for s in tokenized_train]
    n_batches = math.ceil(len(train) / batch)
    if steps is None:
        if epochs is None:
            raise CSDValueError("epochs / steps: give one of them")
        steps = max(1, round(epochs * n_batches))
    warmup = min(warmup, max(1, steps // 10))

    model = build_model(config_dict, seed=seed)
    if init_from is not None:  # warm restart: the weights of a trained stage, in fp32
        from transformers import LlamaForCausalLM
        model.load_state_dict(LlamaForCausalLM.from_pretrained(init_from, dtype=torch.float32).state_dict())
    hooks = add_dropout(model, dropout) if dropout > 0 else []
    model.train()
    n_params = count_parameters(model)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step):  # step in [0, steps): linear warm-up, cosine decay to min_lr_ratio * lr
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    # ---- state: fresh, or restored from out_dir/checkpoint.pt -----------------------------------
    st = dict(step=0, epoch=0, pos=0, order=None, rng=rng.getstate(), tokens_seen=0, elapsed=0.0,
              acc_loss=0.0, acc_n=0, last_loss=float("nan"), val_history=[])
    ckpt_path = log_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "loss_log.jsonl"
    if ckpt_path is not None and ckpt_path.is_file():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["steps"] != steps or ck["config"] != config_dict:
            raise CSDValueError(f"out_dir: {ckpt_path} is a checkpoint of another run "
                             f"(steps {ck['steps']}, config {ck['config']}); delete it to start over")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        st = ck["state"]
        rng.setstate(st["rng"])
        # the log keeps what was written up to the checkpoint, nothing after it
        lines = log_path.read_text().splitlines() if log_path.is_file() else []
        log_path.write_text("".join(l + "\n" for l in lines[: ck["log_lines"]]))
        if progress:
            print(f"[zoo] resuming from {ckpt_path} at step {st['step']}/{steps}", flush=True)
    elif log_path is not None:
        log_path.write_text("")
    log_f = open(log_path, "a", encoding="utf-8") if log_path is not None else None
    n_log = [sum(1 for _ in open(log_path))] if log_path is not None else [0]

    def log(rec):
        if log_f is not None:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            n_log[0] += 1

    def checkpoint():
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "torch_rng": torch.get_rng_state(), "state": st, "steps": steps,
                                         "config": config_dict, "log_lines": n_log[0]})

    t0 = time.perf_counter() - st["elapsed"]
    last_ckpt = time.perf_counter()
    bar = tqdm(total=steps, initial=st["step"], disable=not progress,
               desc=f"d={config_dict.get('hidden_size')}", mininterval=2)
    stopped_early = False
    while st["step"] < steps and not stopped_early:
        if st["order"] is None:  # a new epoch: its batch order comes from the seeded RNG
            st["order"] = _batches(train, batch, rng)
            st["rng"], st["pos"] = rng.getstate(), 0
        while st["pos"] < len(st["order"]) and st["step"] < steps:
            ids = st["order"][st["pos"]]
            for g in opt.param_groups:
                g["lr"] = lr_at(st["step"])
            x, mask, labels = _collate(train, ids, pad_id)
            out = model(input_ids=x, attention_mask=mask, labels=labels)
            loss = out.loss
            if teacher is not None:
                loss = (1 - distill) * loss + distill * _kl_to_teacher(teacher, out.logits, x, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            st["step"] += 1
            st["pos"] += 1
            st["tokens_seen"] += int(mask.sum())
            st["acc_loss"] += loss.item()
            st["acc_n"] += 1
            st["elapsed"] = time.perf_counter() - t0
            if st["step"] % log_every == 0 or st["step"] == steps:
                st["last_loss"] = st["acc_loss"] / st["acc_n"]
                el = st["elapsed"]
                log({"step": st["step"], "epoch": st["epoch"], "loss": round(st["last_loss"], 5),
                     "lr": lr_at(st["step"] - 1), "tokens": st["tokens_seen"], "elapsed_s": round(el, 2),
                     "tok_per_s": round(st["tokens_seen"] / el, 1)})
                bar.set_postfix(loss=f"{st['last_loss']:.3f}", tok_s=f"{st['tokens_seen'] / el:.0f}")
                st["acc_loss"], st["acc_n"] = 0.0, 0
            bar.update(1)
            if checkpoint_every_s is not None and time.perf_counter() - last_ckpt > checkpoint_every_s:
                checkpoint()
                last_ckpt = time.perf_counter()
            if stop_after_steps is not None and stop_after_steps <= st["step"] < steps:
                checkpoint()
                stopped_early = True
                break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                stopped_early = True
                break
        if stopped_early:
            break
        if st["pos"] >= len(st["order"]):  # end of a full epoch (the final one is evaluated below)
            st["epoch"] += 1
            st["order"] = None
            if tokenized_val and st["step"] < steps:
                v = evaluate_loss(model, tokenized_val, batch, seq_len, pad_id)
                st["val_history"].append({"epoch": st["epoch"], "step": st["step"], "val_loss": v})
                log({"epoch_end": st["epoch"], "step": st["step"], "val_loss": round(v, 5),
                     "elapsed_s": round(time.perf_counter() - t0, 2)})
            checkpoint()
            last_ckpt = time.perf_counter()
    bar.close()
    step = st["step"]
    train_time = time.perf_counter() - t0
    last_loss = st["acc_loss"] / st["acc_n"] if st["acc_n"] else st["last_loss"]
    val_loss = (evaluate_loss(model, tokenized_val, batch, seq_len, pad_id)
                if tokenized_val and not stopped_early else None)
    summary = {
        "config": config_dict,
        "parameters": n_params,
        "steps": step,
        "epochs": round(step / n_batches, 3),
        "batch": batch,
        "seq_len": seq_len,
        "lr": lr,
        "warmup": warmup,
        "seed": seed,
        "tokens_seen": st["tokens_seen"],
        "train_time_s": round(train_time, 1),
        "tok_per_s": round(st["tokens_seen"] / train_time, 1),
        "final_train_loss": round(last_loss, 5),
        "val_loss": None if val_loss is None else round(val_loss, 5),
        "val_history": st["val_history"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "saved_dtype": str(save_dtype or torch.float32).replace("torch.", ""),
        "init_from": None if init_from is None else Path(init_from).name,
        "dropout": dropout,
        "distill": distill,
        "complete": not stopped_early,
    }
    if not stopped_early:
        log({"final": True, "step": step, "train_loss": summary["final_train_loss"],
             "val_loss": summary["val_loss"], "train_time_s": summary["train_time_s"]})
    if log_f is not None:
        log_f.close()
    for h in hooks:
        h.remove()
    if out_dir is not None and not stopped_early:
        model.eval()
        if save_dtype is not None:
            model.to(save_dtype).save_pretrained(out_dir, safe_serialization=True)
            model.to(torch.float32)
        else:
            model.save_pretrained(out_dir, safe_serialization=True)
        (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        if ckpt_path.is_file():
            ckpt_path.unlink()
    return model, summary


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


def _is_trained(d: Path) -> bool:
    return (d / "training.json").is_file() and (d / "model.safetensors").is_file()


def _prepare(out_dir: Path, data_dir, budget: str, seed: int, tok_dir: Path | None = None):
    """Examples split, tokenizer (trained or reused; ``tok_dir`` defaults to ``out_dir/tokenizer``)
    and tokenized train/val sets."""
    from transformers import AutoTokenizer

    b = BUDGETS[budget]
    examples = load_gsm8k("train", data_dir)
    if b["max_examples"] is not None:
        examples = examples[: b["max_examples"]]
    train_ex, val_ex = _split(examples, b["val_fraction"], seed)
    tok_dir = Path(tok_dir) if tok_dir is not None else out_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        texts = [gsm8k_prompt(ex["question"]) for ex in train_ex] + [ex["answer"] for ex in train_ex]
        tok = train_tokenizer(texts, b["vocab_size"], tok_dir)
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
    for name in MODEL_NAMES:
        d = out_dir / name
        if only is not None and name not in only:
            continue
        if _is_trained(d):
            summaries[name] = json.loads((d / "training.json").read_text())
            if progress:
                print(f"[zoo] {name}: already trained in {d}, skipping")
            continue
        m = b["models"][name]
        cfg = _model_config(m["arch"], tok)
        tmp = out_dir / f".{name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        if progress:
            print(f"[zoo] training {name}: {m['arch']}", flush=True)
        _, summ = train_model(
            cfg, train_ids, val_ids,
            epochs=m.get("epochs"), steps=m.get("steps"), lr=m["lr"], batch=b["batch"],
            seq_len=b["seq_len"], seed=seed, out_dir=tmp, warmup=b["warmup"], log_every=b["log_every"],
            progress=progress,
        )
        if d.exists():
            shutil.rmtree(d)
        tmp.rename(d)
        summaries[name] = summ
        if progress:
            print(f"[zoo] {name}: {summ['parameters']:,} params, val loss {summ['val_loss']}, "
                  f"{summ['train_time_s']} s", flush=True)
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
    command again resumes the stage in progress and skips the finished ones. Every stage's weights are
    saved in bf16 (the next stage and users load them as fp32); the last stage's go to
    ``out_dir/target``. The family shares gsm8k-tiny's tokenizer,
    drafters and bigram table (``family.json`` names the folder). ``stop_after_steps`` stops the stage
    in progress at that step, as if interrupted (tests). A stage with ``distill`` > 0 distils from
    gsm8k-tiny's target as well as learning from the data (``train_model``'s ``teacher``/``distill``).
    """
    if budget not in BASE_BUDGETS:
        raise CSDValueError(f"budget: unknown budget {budget!r}; expected one of {list(BASE_BUDGETS)}")
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_BASE_DIR
    tiny_dir = Path(tiny_dir) if tiny_dir is not None else DEFAULT_FAMILY_DIR
    b, m = BUDGETS[budget], BASE_BUDGETS[budget]["models"]["target"]
    out_dir.mkdir(parents=True, exist_ok=True)
    d = out_dir / "target"
    if _is_trained(d):
        if progress:
            print(f"[zoo] target: already trained in {d}, skipping")
        return json.loads((d / "training.json").read_text())
    tok, train_ids, val_ids, n_train, n_val = _prepare(out_dir, data_dir, budget, seed, tiny_dir / "tokenizer")
    cfg = _model_config(m["arch"], tok)
    stages, prev, summaries = m["stages"], None, []
    for i, stage in enumerate(stages, start=1):
        sd = out_dir / f".target.stage{i}.partial"
        if _is_trained(sd):
            done = json.loads((sd / "training.json").read_text())
            if done.get("stage", stage) != stage:
                raise CSDValueError(f"out_dir: {sd} holds a stage trained with {done['stage']}, not this "
                                    f"recipe's {stage}; delete it to train again")
            summaries.append(done)
            prev = sd
            continue
        if progress:
            print(f"[zoo] gsm8k-base target, stage {i}/{len(stages)}: {m['arch']} {stage} "
                  f"(partial state in {sd})", flush=True)
        _, summ = train_model(
            cfg, train_ids, val_ids,
            epochs=stage.get("epochs"), steps=stage.get("steps"), lr=stage["lr"],
            batch=stage.get("batch", b["batch"]), seq_len=b["seq_len"], seed=seed + i - 1, out_dir=sd,
            warmup=stage.get("warmup", b["warmup"]), log_every=b["log_every"], progress=progress,
            checkpoint_every_s=checkpoint_every_s, stop_after_steps=stop_after_steps,
            save_dtype=torch.bfloat16, init_from=prev, dropout=stage.get("dropout", 0.0),
            teacher=_teacher(tiny_dir) if stage.get("distill") else None, distill=stage.get("distill", 0.0),
        )
        if not summ["complete"]:
            return summ
        summ["stage"] = stage
        (sd / "training.json").write_text(json.dumps(summ, indent=2) + "\n")
        summaries.append(summ)
        prev = sd
    summ = dict(summaries[-1])
    summ["stages"] = [{k: v for k, v in s.items() if k not in ("config",)} for s in summaries]
    summ["train_time_s"] = round(sum(s["train_time_s"] for s in summaries), 1)
    summ["tokens_seen"] = sum(s["tokens_seen"] for s in summaries)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy2(prev / f, d / f)
    with open(d / "loss_log.jsonl", "w", encoding="utf-8") as log:
        for i in range(1, len(stages) + 1):
            for line in (out_dir / f".target.stage{i}.partial" / "loss_log.jsonl").read_text().splitlines():
                log.write(json.dumps({"stage": i, **json.loads(line)}) + "\n")
    (d / "training.json").write_text(json.dumps(summ, indent=2) + "\n")
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
        "recipe": {**{k: v for k, v in b.items() if k != "models"}, "models": BASE_BUDGETS[budget]["models"]},
        "models": {"target": {k: v for k, v in summ.items() if k != "val_history"}},
    })
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    if progress:
        print(f"[zoo] gsm8k-base target: {summ['parameters']:,} params, val loss {summ['val_loss']}, "
              f"{summ['train_time_s']} s", flush=True)
    return summ


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
    b = BUDGETS[budget]
    examples = load_gsm8k("train", data_dir)
    if b["max_examples"] is not None:
        examples = examples[: b["max_examples"]]
    train_ex, _ = _split(examples, b["val_fraction"], seed)
    tok = AutoTokenizer.from_pretrained(out_dir / "tokenizer")
    vocab = json.loads((out_dir / "target" / "config.json").read_text())["vocab_size"]
    table = BigramTable.from_sequences(tokenize_examples(tok, train_ex), vocab_size=vocab)
    table.save(out_dir / BIGRAM_FILE)
    return table
