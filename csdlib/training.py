"""Training one small causal LM on token sequences: the loop behind the families' recipe (`csdlib.recipe`).

    cfg = TrainConfig(epochs=4, lr=1e-3, batch=16)
    model, summary = train_model(llama_config_dict, train_ids, val_ids, cfg, out_dir="data/models/x/target")

Batches are whole sequences (truncated to ``seq_len``), grouped by length to keep padding small, padded
on the right and masked; AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then
cosine decay to ``min_lr_ratio`` of the peak learning rate, gradient clipping at 1.0. Optional dropout
(`add_dropout`) and distillation from a frozen teacher. Interrupted runs resume exactly from
``out_dir/checkpoint.pt``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import CSDValueError

MAX_POSITION_EMBEDDINGS = 512


@dataclass
class TrainConfig:
    """How to train one model. Give ``epochs`` or ``steps``.

    ``dropout`` > 0 adds dropout while training (`add_dropout`). ``distill`` > 0 (with a teacher given
    to `train_model`) mixes in knowledge distillation: loss = (1 - distill) * cross-entropy + distill *
    KL(teacher || model), per token, over the same tokens (Hinton et al., 2015, at temperature 1).
    ``save_dtype``: the dtype the weights are saved in (e.g. bf16 for a large target; None: fp32).
    ``checkpoint_every_s``: seconds between checkpoints (None: only at the end of each epoch).
    ``stop_after_steps`` stops (after checkpointing) at that step as if interrupted (tests);
    ``max_seconds`` stops early without a checkpoint (the throughput micro-benchmark).
    ``lora_rank`` > 0: the started model's decoder linear layers stay frozen and learn rank-r adapters, the
    norms learn in full, the rest is frozen (`csdlib.lora`); the saved model has them merged.
    ``autocast`` "bfloat16": forward and backward in bf16 mixed precision (`torch.autocast`; the weights, the
    optimizer and the losses stay float32), only on a CPU with bf16 units (2.4x float32's step on an
    AMX-BF16 Xeon: docs/ladder.md); None: float32."""
    epochs: float | None = None
    steps: int | None = None
    lr: float = 1e-3
    batch: int = 16
    seq_len: int = 384
    seed: int = 0
    warmup: int = 100
    log_every: int = 20
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    dropout: float = 0.0
    distill: float = 0.0
    save_dtype: torch.dtype | None = None
    checkpoint_every_s: float | None = 600.0
    stop_after_steps: int | None = None
    max_seconds: float | None = None
    lora_rank: int = 0
    autocast: str | None = None

    def total_steps(self, n_batches: int) -> int:
        """Optimizer steps of the run, for ``n_batches`` batches per epoch."""
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            raise CSDValueError("epochs / steps: give one of them")
        return max(1, round(self.epochs * n_batches))

    def lr_at(self, step: int, steps: int, warmup: int) -> float:
        """Learning rate of ``step`` in [0, steps): linear warm-up, cosine decay to min_lr_ratio * lr."""
        if step < warmup:
            return self.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_model(config_dict: dict, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` from a dict of ``LlamaConfig`` fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(max_position_embeddings=MAX_POSITION_EMBEDDINGS, tie_word_embeddings=True, rms_norm_eps=1e-5,
               hidden_act="silu")
    cfg.update(config_dict)
    cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    config = LlamaConfig(**cfg)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def add_dropout(model, p: float) -> list:
    """Dropout with probability ``p`` on the token embeddings and on the output of every attention and
    MLP block (before it joins the residual stream), active in training mode only, as GPT-2 has it;
    ``LlamaForCausalLM`` has no such dropout of its own. Forward hooks, so nothing is saved with the
    weights: the trained model is a plain Llama. Returns the hook handles."""
    def drop_first(module, args, out):
        return (F.dropout(out[0], p, module.training), *out[1:]) if isinstance(out, tuple) else \
            F.dropout(out, p, module.training)

    handles = [model.model.embed_tokens.register_forward_hook(drop_first)]
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(drop_first))
        handles.append(layer.mlp.register_forward_hook(drop_first))
    return handles


def _init_model(model_config: dict, c: TrainConfig, init_from):
    """(model in training mode, dropout hook handles): fresh from ``c.seed``, or the weights of a trained
    model folder ``init_from`` (a warm restart), in fp32."""
    model = build_model(model_config, seed=c.seed)
    if init_from is not None:
        from transformers import LlamaForCausalLM
        model.load_state_dict(LlamaForCausalLM.from_pretrained(init_from, dtype=torch.float32).state_dict())
    if c.lora_rank:
        from .lora import add_lora
        add_lora(model, c.lora_rank)
    hooks = add_dropout(model, c.dropout) if c.dropout > 0 else []
    return model.train(), hooks


def _optimizer(model, c: TrainConfig):
    """AdamW, weight decay on matrices only."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 and p.requires_grad]
    return torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=c.lr, betas=(0.9, 0.95), eps=1e-8)


# --------------------------------------------------------------------------------------------------
# Batches and losses
# --------------------------------------------------------------------------------------------------

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
    KL(teacher || model) of the next-token distributions. A teacher with a `kl(logits, x, mask)` method
    (sparse soft labels: `csdlib.drafter_data.SoftLabels`) computes it itself."""
    if hasattr(teacher, "kl"):
        return teacher.kl(logits, x, mask)
    with torch.no_grad():
        t_logp = torch.log_softmax(teacher(input_ids=x, attention_mask=mask).logits[:, :-1].float(), -1)
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    kl = F.kl_div(logp, t_logp, reduction="none", log_target=True).sum(-1)   # per position, nats
    keep = mask[:, 1:].bool()                              # the next token is a real one
    return kl[keep].mean()


def _check_autocast(c: TrainConfig) -> None:
    from .precision import cpu_isa

    if c.autocast not in (None, "bfloat16"):
        raise CSDValueError(f"autocast: expected 'bfloat16' or None (float32), got {c.autocast!r}")
    if c.autocast and cpu_isa() == "neither":
        raise CSDValueError("autocast: bfloat16 training needs a CPU with bf16 units (AVX512-BF16 or AMX-BF16) "
                            "and this one has neither; train in float32 (leave autocast out)")


def _optimizer_step(model, opt, x, mask, labels, teacher, distill: float, autocast: str | None = None) -> float:
    """One step on one batch (in bf16 mixed precision with `autocast`); returns its loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bfloat16"):
        out = model(input_ids=x, attention_mask=mask, labels=labels)
        loss = out.loss.float()
        if teacher is not None:
            loss = (1 - distill) * loss + distill * _kl_to_teacher(teacher, out.logits, x, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


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
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tgt.reshape(-1), ignore_index=-100,
                               reduction="sum")
        total += loss.item()
        count += int((tgt != -100).sum())
    model.train()
    return total / max(count, 1)


# --------------------------------------------------------------------------------------------------
# The run's files: loss log and checkpoint
# --------------------------------------------------------------------------------------------------

def _fresh_state(rng: random.Random) -> dict:
    """The training state a checkpoint saves: counters, the epoch's batch order and the position in it,
    the batch-order RNG's state, the loss accumulated since the last log line, the validation history."""
    return dict(step=0, epoch=0, pos=0, order=None, rng=rng.getstate(), tokens_seen=0, elapsed=0.0,
                acc_loss=0.0, acc_n=0, last_loss=float("nan"), val_history=[])


class RunFiles:
    """``out_dir/loss_log.jsonl`` (one JSON object per line, written as training goes) and
    ``out_dir/checkpoint.pt`` (the whole training state); both do nothing when ``out_dir`` is None."""

    def __init__(self, out_dir):
        self.dir = Path(out_dir) if out_dir is not None else None
        self.ckpt = self.log_path = self.log_f = None
        self.log_lines = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.ckpt, self.log_path = self.dir / "checkpoint.pt", self.dir / "loss_log.jsonl"

    def resume(self, model, opt, rng: random.Random, steps: int, model_config: dict, progress: bool) -> dict:
        """The training state: restored with model, optimizer and both RNGs from the checkpoint (the log
        keeps the lines written up to it), or a fresh one (and an empty log) when there is none."""
        lines, state = [], _fresh_state(rng)
        if self.ckpt is not None and self.ckpt.is_file():
            ck = torch.load(self.ckpt, weights_only=False)
            if ck["steps"] != steps or ck["config"] != model_config:
                raise CSDValueError(f"out_dir: {self.ckpt} is a checkpoint of another run "
                                    f"(steps {ck['steps']}, config {ck['config']}); delete it to start over")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["torch_rng"])
            state = ck["state"]
            rng.setstate(state["rng"])
            lines = self.log_path.read_text().splitlines()[: ck["log_lines"]] if self.log_path.is_file() else []
            if progress:
                print(f"[zoo] resuming from {self.ckpt} at step {state['step']}/{steps}", flush=True)
        if self.log_path is not None:
            self.log_path.write_text("".join(line + "\n" for line in lines))
            self.log_f, self.log_lines = open(self.log_path, "a", encoding="utf-8"), len(lines)
        return state

    def log(self, rec: dict) -> None:
        if self.log_f is not None:
            self.log_f.write(json.dumps(rec) + "\n")
            self.log_f.flush()
            self.log_lines += 1

    def checkpoint(self, model, opt, state: dict, steps: int, model_config: dict) -> None:
        """Write the training state atomically (a crash mid-write keeps the previous checkpoint)."""
        if self.ckpt is None:
            return
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "state": state, "steps": steps, "config": model_config, "log_lines": self.log_lines}, tmp)
        os.replace(tmp, self.ckpt)

    def save_model(self, model, summary: dict, dtype) -> None:
        """The trained model (safetensors, in ``dtype`` if given), ``training.json``; the checkpoint goes."""
        if self.dir is None:
            return
        model.eval()
        if dtype is not None:
            model.to(dtype).save_pretrained(self.dir, safe_serialization=True)
            model.to(torch.float32)
        else:
            model.save_pretrained(self.dir, safe_serialization=True)
        (self.dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.ckpt.is_file():
            self.ckpt.unlink()

    def close(self) -> None:
        if self.log_f is not None:
            self.log_f.close()


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

def _check_config(c: TrainConfig, teacher) -> None:
    """A distillation weight with a teacher (frozen here), or none without; then the autocast dtype."""
    if not 0.0 <= c.distill <= 1.0 or (c.distill > 0) != (teacher is not None):
        raise CSDValueError(f"distill: a weight in [0, 1] with a teacher model, or 0 without one; got "
                            f"{c.distill} and {'a' if teacher is not None else 'no'} teacher")
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    _check_autocast(c)


def _log_interval(files: RunFiles, bar, st: dict, lr: float) -> None:
    """One line of the loss log: the mean loss since the previous one."""
    st["last_loss"], el = st["acc_loss"] / st["acc_n"], st["elapsed"]
    files.log({"step": st["step"], "epoch": st["epoch"], "loss": round(st["last_loss"], 5), "lr": lr,
               "tokens": st["tokens_seen"], "elapsed_s": round(el, 2), "tok_per_s": round(st["tokens_seen"] / el, 1)})
    bar.set_postfix(loss=f"{st['last_loss']:.3f}", tok_s=f"{st['tokens_seen'] / el:.0f}")
    st["acc_loss"], st["acc_n"] = 0.0, 0


def train_model(model_config: dict, train_ids, val_ids, config: TrainConfig | None = None, *, out_dir=None,
                init_from=None, teacher=None, progress: bool = True, **overrides):
    """Train a ``LlamaForCausalLM`` built from ``model_config`` (``LlamaConfig`` fields) on the token
    sequences ``train_ids`` as ``config`` says (keyword ``overrides`` replace its fields); save it to
    ``out_dir`` (``save_pretrained``, ``training.json``, ``loss_log.jsonl`` written as it trains, with
    the validation loss on ``val_ids`` after every epoch and at the end). Returns ``(model, summary)``.
    Every ``checkpoint_every_s`` seconds and at every epoch's end the training state goes to
    ``out_dir/checkpoint.pt``: called again with the same arguments, it resumes there and ends with the
    same model as an uninterrupted run (``summary["complete"]``: False for a run stopped early).
    ``init_from``: a saved model folder to start from (a warm restart); ``teacher``: a frozen causal LM
    with the same vocabulary to distil from (``config.distill`` > 0)."""
    from tqdm.auto import tqdm

    c = replace(config or TrainConfig(), **overrides)
    _check_config(c, teacher)
    pad_id = int(model_config.get("pad_token_id", 2))
    rng = random.Random(c.seed)
    train = [s[:c.seq_len] for s in train_ids]
    n_batches = math.ceil(len(train) / c.batch)
    steps = c.total_steps(n_batches)
    warmup = min(c.warmup, max(1, steps // 10))
    model, hooks = _init_model(model_config, c, init_from)
    opt = _optimizer(model, c)
    files = RunFiles(out_dir)
    st = files.resume(model, opt, rng, steps, model_config, progress)
    t0, last_ckpt = time.perf_counter() - st["elapsed"], time.perf_counter()
    bar = tqdm(total=steps, initial=st["step"], disable=not progress, desc=f"d={model_config.get('hidden_size')}",
               mininterval=2)
    stopped_early = False
    while st["step"] < steps and not stopped_early:
        if st["order"] is None:  # a new epoch: its batch order comes from the seeded RNG
            st["order"] = _batches(train, c.batch, rng)
            st["rng"], st["pos"] = rng.getstate(), 0
        if st["pos"] < len(st["order"]):
            for g in opt.param_groups:
                g["lr"] = c.lr_at(st["step"], steps, warmup)
            x, mask, labels = _collate(train, st["order"][st["pos"]], pad_id)
            loss = _optimizer_step(model, opt, x, mask, labels, teacher, c.distill, c.autocast)
            st["step"] += 1
            st["pos"] += 1
            st["tokens_seen"] += int(mask.sum())
            st["acc_loss"] += loss
            st["acc_n"] += 1
            st["elapsed"] = time.perf_counter() - t0
            if st["step"] % c.log_every == 0 or st["step"] == steps:
                _log_interval(files, bar, st, c.lr_at(st["step"] - 1, steps, warmup))
            bar.update(1)
            if c.checkpoint_every_s is not None and time.perf_counter() - last_ckpt > c.checkpoint_every_s:
                files.checkpoint(model, opt, st, steps, model_config)
                last_ckpt = time.perf_counter()
            if c.stop_after_steps is not None and c.stop_after_steps <= st["step"] < steps:
                files.checkpoint(model, opt, st, steps, model_config)        # as if interrupted here
                stopped_early = True
            elif c.max_seconds is not None and time.perf_counter() - t0 > c.max_seconds:
                stopped_early = True
        if not stopped_early and st["pos"] >= len(st["order"]):  # an epoch's end (the last one's: below)
            st["epoch"], st["order"] = st["epoch"] + 1, None
            if val_ids and st["step"] < steps:
                v = evaluate_loss(model, val_ids, c.batch, c.seq_len, pad_id)
                st["val_history"].append({"epoch": st["epoch"], "step": st["step"], "val_loss": v})
                files.log({"epoch_end": st["epoch"], "step": st["step"], "val_loss": round(v, 5),
                           "elapsed_s": round(time.perf_counter() - t0, 2)})
            files.checkpoint(model, opt, st, steps, model_config)
            last_ckpt = time.perf_counter()
    bar.close()
    train_time = time.perf_counter() - t0     # without the final validation
    for h in hooks:
        h.remove()
    if c.lora_rank and not stopped_early:
        from .lora import merge_lora
        merge_lora(model)
    val_loss = evaluate_loss(model, val_ids, c.batch, c.seq_len, pad_id) if val_ids and not stopped_early else None
    summary = _summary(c, model_config, model, st, st["step"] / n_batches, warmup, train_time, val_loss,
                       init_from, not stopped_early)
    if not stopped_early:
        files.log({"final": True, "step": st["step"], "train_loss": summary["final_train_loss"],
                   "val_loss": summary["val_loss"], "train_time_s": summary["train_time_s"]})
        files.save_model(model, summary, c.save_dtype)
    files.close()
    return model, summary


def _summary(c: TrainConfig, model_config, model, st, epochs, warmup, train_time, val_loss, init_from,
             complete) -> dict:
    """``training.json``: what was trained, how, and how it went."""
    last_loss = st["acc_loss"] / st["acc_n"] if st["acc_n"] else st["last_loss"]
    return {
        "config": model_config,
        "parameters": count_parameters(model),
        "steps": st["step"],
        "epochs": round(epochs, 3),
        "batch": c.batch,
        "seq_len": c.seq_len,
        "lr": c.lr,
        "warmup": warmup,
        "seed": c.seed,
        "tokens_seen": st["tokens_seen"],
        "train_time_s": round(train_time, 1),
        "tok_per_s": round(st["tokens_seen"] / train_time, 1),
        "final_train_loss": round(last_loss, 5),
        "val_loss": None if val_loss is None else round(val_loss, 5),
        "val_history": st["val_history"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "saved_dtype": str(c.save_dtype or torch.float32).replace("torch.", ""),
        "init_from": None if init_from is None else Path(init_from).name,
        "dropout": c.dropout,
        "distill": c.distill,
        **({"lora_rank": c.lora_rank} if c.lora_rank else {}),
        "complete": complete,
    }
