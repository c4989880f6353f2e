"""What the GSM8K benchmark scripts share: their common flags."""

from __future__ import annotations

import argparse


def gsm8k_parser(doc: str, family: str, prompts: int, threads: int) -> argparse.ArgumentParser:
    """A parser with --family, --prompts, --max-new-tokens, --threads and --data-dir (GSM8K dev prompts)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--family", default=family, help="gsm8k-tiny, gsm8k-base or a family folder")
    p.add_argument("--prompts", type=int, default=prompts, help="GSM8K dev prompts (the first N)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=threads, help="torch threads")
    p.add_argument("--data-dir", default=None, help="folder holding gsm8k/ (default: $CSD_DATA_DIR)")
    return p
