"""The drafters' vocabulary and training data, from the target's answers (`csdlib.answers`): an output
vocabulary of the tokens the target writes most (FR-Spec), the answers in a drafter's own ids, the sparse
soft labels it is distilled from (`SoftLabels`), held-out rows and teacher-forced agreement, and
`remap_vocab`, which moves a trained drafter onto another vocabulary. `csdlib.distill` puts them together.
"""

from __future__ import annotations

import torch

from .errors import CSDValueError


def frequent_tokens(rows: list[dict], n: int, keep=(), vocab_size: int | None = None) -> list[int]:
    """The drafters' output vocabulary (FR-Spec), `n` tokens: those in `keep` (EOS, the chat markers), then
    the tokens of the target's answers and of their prompts by frequency (answers copy names and numbers
    from their questions; ties: the lower id first), then, up to `n`, the lowest ids of the tokenizer
    (`vocab_size`): byte-level BPE numbers its merges in order, so those are its most frequent tokens."""
    counts: dict[int, int] = {}
    for r in rows:
        for t in [*r["answer"], *r["prompt"]]:
            counts[t] = counts.get(t, 0) + 1
    ids = [int(t) for t in keep]
    ids += [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    ids += range(vocab_size or 0)
    return list(dict.fromkeys(ids))[:n]


def coverage(rows: list[dict], vocab: list[int]) -> float:
    """The fraction of the answers' tokens that `vocab` holds (what a drafter on it can propose)."""
    inside, total = set(vocab), 0
    hit = 0
    for r in rows:
        total += len(r["answer"])
        hit += sum(t in inside for t in r["answer"])
    return hit / max(1, total)


def local_ids(vocab: list[int], full_vocab_size: int) -> torch.Tensor:
    """target id -> the drafter's row (`len(vocab)`, the last row, for every token outside `vocab`)."""
    table = torch.full((full_vocab_size,), len(vocab), dtype=torch.long)
    table[torch.tensor(vocab)] = torch.arange(len(vocab))
    return table


def sequences(rows: list[dict], table: torch.Tensor) -> list[list[int]]:
    """Each row's prompt + answer in the drafter's own ids."""
    return [table[torch.tensor(r["prompt"] + r["answer"])].tolist() for r in rows]


class SoftLabels:
    """Sparse soft labels for `training.train_model`'s distillation (a "teacher" with a `kl` method): at each
    answer position of a training sequence, KL(target || drafter) over the target's recorded top-k tokens
    (their probabilities renormalised over those k, tokens outside the drafter's vocabulary dropped) against
    the drafter's log-probabilities over its whole vocabulary. Sequences are recognised by their token ids;
    prompt positions get the cross-entropy only."""

    def __init__(self, rows: list[dict], seqs: list[list[int]], table: torch.Tensor, seq_len: int):
        self.outside = int(table.max())                  # the row for tokens outside the vocabulary
        self.by_seq = {}
        for r, s in zip(rows, seqs):
            ids = table[r["top_ids"].long()]                       # answer positions x k, own rows
            logp = r["top_logp"].float().masked_fill(ids == self.outside, float("-inf"))
            # a position whose top-k all lie outside the vocabulary (a name the drafter cannot write) has
            # no soft label: its row is all zeros (softmax over nothing) and it is left out of the mean
            probs = torch.softmax(logp, -1).nan_to_num(0.0)
            self.by_seq[tuple(s[:seq_len])] = (len(r["prompt"]), ids, probs)

    def eval(self):
        return self

    def requires_grad_(self, flag: bool = True):
        return self

    def kl(self, logits, x, mask):
        """Mean KL(target's top-k || drafter) over the answer positions of the batch `x`."""
        at_b, at_t, ids, probs = [], [], [], []
        for i in range(x.shape[0]):
            n = int(mask[i].sum())
            start, top, p = self.by_seq[tuple(x[i, :n].tolist())]
            m = min(len(top), n - start)            # answer token j sits at start + j, predicted at start + j - 1
            if m > 0:
                at_b.append(torch.full((m,), i))
                at_t.append(torch.arange(start - 1, start - 1 + m))
                ids.append(top[:m])
                probs.append(p[:m])
        if not ids:
            return logits.sum() * 0
        own = logits[torch.cat(at_b), torch.cat(at_t)].float()               # positions x vocabulary
        logq = own.gather(-1, torch.cat(ids)) - torch.logsumexp(own, -1, keepdim=True)
        p = torch.cat(probs)
        labelled = p.sum(-1) > 0
        if not labelled.any():
            return logits.sum() * 0
        return (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1)[labelled].mean()


def held_out(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(held-out rows, training rows): a seeded shuffle, `fraction` of the rows (at least one) held out."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(rows)))
    return [rows[i] for i in order[:n_val]], [rows[i] for i in order[n_val:]]


def drafter_config(arch: dict, vocab: list[int], special: dict) -> dict:
    """`LlamaConfig` fields of a drafter on `vocab` (+ one row for other tokens), special ids in own rows."""
    own = {t: i for i, t in enumerate(vocab)}
    return {**arch, "vocab_size": len(vocab) + 1, "max_position_embeddings": 8192, "rope_theta": 100000.0,
            **{k: own[v] for k, v in special.items()}}


@torch.no_grad()
def agreement(model, rows: list[dict], table: torch.Tensor, vocab: list[int]) -> float:
    """Teacher-forced agreement on `rows`: the fraction of answer tokens that the drafter's argmax (over
    its vocabulary, mapped back to the target's ids) equals: the acceptance rate of a one-token draft."""
    model.eval()
    vocab_t = torch.tensor(vocab)
    hit = total = 0
    for r in rows:
        s = table[torch.tensor(r["prompt"] + r["answer"])][None]
        logits = model(input_ids=s).logits[0, len(r["prompt"]) - 1:-1, :len(vocab)]
        hit += int((vocab_t[logits.argmax(-1)] == torch.tensor(r["answer"])).sum())
        total += len(r["answer"])
    return hit / max(1, total)


def remap_vocab(model, old: list[int], new: list[int]) -> None:
    """Move a drafter's embedding rows (tied to its output layer) from vocabulary `old` to `new` (same
    size, each plus one row for every other token), in place: a token in both keeps its trained row, a
    token new to it starts from the old "every other token" row."""
    if len(old) != len(new):
        raise CSDValueError(f"vocabularies: expected the same size, got {len(old)} and {len(new)}")
    pos = {t: i for i, t in enumerate(old)}
    rows = torch.tensor([pos.get(t, len(old)) for t in new] + [len(old)])
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb.copy_(emb[rows].clone())
        head = model.get_output_embeddings()
        if head is not None and head.weight is not emb:
            head.weight.copy_(head.weight[rows].clone())
