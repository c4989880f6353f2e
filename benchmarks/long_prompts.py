"""Long prompts (Spec-Bench's summarization and RAG run 800-1,000 tokens): what each model's prefill costs,
what one target step costs after it, and what MaG's max-gram search over the prompt costs per proposal,
against the prompt's length.

    python benchmarks/long_prompts.py --family smollm2 --dtype bfloat16 --lengths 1000,2000,4000 --threads 2 \
        --out data/results/long-prompts-smollm2

The prompt: Spec-Bench's RAG and summarization questions joined and cut to each length (read from
`$CSD_DATA_DIR/spec_bench/`, never stored). Per length: each neural model's prefill (median of
`--repeats`), the target's one-token step after it (median of 20, its cache cropped back each time), and
MaG's `propose` of 3 tokens (median of 200 calls) for a sequence whose suffix occurs in the prompt (the
search narrows over every occurrence: its dear case) and for one whose last token never occurs there.
Written as markdown and JSON under `--out` with the machine and its ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_table  # noqa: E402
from csdlib import zoo  # noqa: E402
from csdlib.datasets import load_spec_bench  # noqa: E402
from csdlib.precision import hardware  # noqa: E402
from csdlib.protocol import is_free  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def long_text_ids(fam, data_dir, length: int) -> list[int]:
    """Spec-Bench's RAG and summarization questions, joined, as `length` token ids."""
    qs = load_spec_bench(["rag", "summarization"], data_dir=data_dir)
    ids: list[int] = []
    for q in qs:
        ids += fam.tokenizer(q["turns"][0])["input_ids"]
        if len(ids) >= length:
            return ids[:length]
    raise SystemExit(f"Spec-Bench's RAG and summarization questions hold {len(ids)} tokens, fewer than {length}")


@torch.no_grad()
def prefill_and_step(m, ids: list[int], repeats: int) -> tuple[float, float]:
    """(prefill seconds, one-token step seconds after it) of a decoder-only `HFModel` (a drafter with a
    vocabulary of its own reads its own ids)."""
    model = m.model
    if m.vocab is not None:
        ids = m._local[torch.tensor(ids)].tolist()
    x = torch.tensor([ids], device=model.device)
    prefill = median_seconds(lambda: model(x, use_cache=True), repeats)
    cache = model(x, use_cache=True).past_key_values
    one = torch.tensor([[ids[-1]]], device=model.device)

    def step():
        model(one, past_key_values=cache, use_cache=True)
        cache.crop(-1)                   # back to the prompt: every step sees the same context

    step()
    return prefill, median_seconds(step, 20)


def mag_seconds(mag, prompt: list[int], calls: int = 200) -> dict:
    """MaG's propose(3) time: a sequence ending in a piece of the prompt (matched), and one ending in a
    token the prompt lacks (no match: the bigram table fills)."""
    mag.start(prompt)
    absent = next(t for t in range(mag.vocab_size) if t not in set(prompt))
    matched = prompt + prompt[len(prompt) // 2:len(prompt) // 2 + 16]
    return {"start_s": median_seconds(lambda: mag.start(prompt), 20),
            "matched_s": median_seconds(lambda: mag.propose(matched, 3), calls),
            "unmatched_s": median_seconds(lambda: mag.propose(prompt + [absent], 3), calls)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="smollm2")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--lengths", default="1000,2000,4000", help="prompt lengths in tokens")
    p.add_argument("--repeats", type=int, default=3, help="prefills timed per model and length")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    fam = zoo.load(a.family, dtype=a.dtype)
    mag = next(d for d in fam.drafters if is_free(d))
    models = [fam.target, *[d for d in fam.drafters if not is_free(d)]]
    rows = []
    for length in [int(x) for x in a.lengths.split(",")]:
        ids = long_text_ids(fam, a.data_dir, length)
        row = {"tokens": length}
        for m in models:
            prefill, step = prefill_and_step(m, ids, a.repeats)
            row[f"{m.name} prefill s"], row[f"{m.name} step ms"] = prefill, step * 1e3
        row.update({f"MaG {k[:-2]} us": v * 1e6 for k, v in mag_seconds(mag, ids).items()})
        row["MaG / target step"] = row["MaG matched us"] / (row[f"{fam.target.name} step ms"] * 1e3)
        rows.append(row)
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    machine = {**hardware(torch.device("cpu")), "platform": platform.platform(), "threads": a.threads,
               "torch": torch.__version__, "dtype": a.dtype, "family": a.family}
    command = "python benchmarks/long_prompts.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    cols = list(rows[0])
    head = (f"{a.family}, {a.dtype}, {a.threads} thread(s), CPU {machine['cpu']} (bf16 units: {machine['cpu_isa']}), "
            f"torch {machine['torch']}; `{command}`")
    print(write_table(a.out, "long_prompts", head, rows, cols, {**machine, "command": command}, digits=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
