"""A grown rung's agreement against its size, its data and how it trains: smollm2's `GROW_RECIPE` with one
or more settings changed per point, each grown by `grow.grow_drafter` (resumable: a point already trained in
~/.cache/csdlib is reused) into a scratch folder and measured as stored, on the held-out training answers and on
the ladder's GSM8K dev answers (the same for every point).

    python benchmarks/grow_sweep.py --threads 2 --points "layers=8;layers=8,questions=512;layers=4"

Writes data/results/grow-sweep-smollm2/sweep.{md,json} (or --out). Each point costs its answers (35 minutes per 1,024 on
2 AVX2 cores, shared by every point) and its training (about 30 minutes for 8 layers and 1,024 answers).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import gsm8k_parser, write_table  # noqa: E402
from csdlib import zoo  # noqa: E402
from csdlib.corpus import dev_items  # noqa: E402
from csdlib.drafter_data import agreement, local_ids  # noqa: E402
from csdlib.errors import CSDValueError  # noqa: E402
from csdlib.grow import GROW_RECIPE, grow_drafter, load_grown  # noqa: E402
from csdlib.precision import hardware  # noqa: E402


def parse_points(text: str) -> list[dict]:
    """"layers=8;layers=4,questions=512" -> [{"layers": 8}, {"layers": 4, "questions": 512}] (numbers parsed)."""
    points = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        point = {}
        for item in part.split(","):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in GROW_RECIPE:
                raise CSDValueError(f"--points: expected key=value with a key of GROW_RECIPE "
                                    f"({', '.join(GROW_RECIPE)}), got {item!r}")
            point[key.strip()] = json.loads(value) if value.strip()[:1].isdigit() else value.strip()
        points.append(point)
    return points


def main() -> int:
    p = gsm8k_parser(__doc__, "smollm2", 50, 2)
    p.add_argument("--points", default="layers=8;layers=8,questions=512;layers=4",
                   help="';'-separated points, each ','-separated key=value changes to GROW_RECIPE")
    p.add_argument("--out", default=str(ROOT / "data" / "results" / "grow-sweep-smollm2"), help="results folder")
    args = p.parse_args()
    points = parse_points(args.points)
    torch.set_num_threads(args.threads)
    fam = zoo.load("smollm2", progress=False)
    target = fam.target.model
    dev = [{"prompt": a, "answer": b} for a, b in dev_items("smollm2", args.prompts, args.max_new_tokens,
                                                             data_dir=args.data_dir)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, point in enumerate(points):
            recipe = {**GROW_RECIPE, **point}
            report = grow_drafter(Path(scratch) / str(i), recipe=recipe, data_dir=args.data_dir)
            folder = Path(scratch) / str(i) / recipe["name"]
            t = json.loads((folder / "training.json").read_text())
            d = load_grown(folder, recipe["name"], target)
            vocab = d.vocab.tolist()
            rows.append({"point": ", ".join(f"{k}={v}" for k, v in point.items()) or "the recipe",
                         "layers": recipe["layers"], "answers": t["answers"], "epochs": t["epochs"],
                         "training": "adapters r" + str(recipe["lora_rank"]) if recipe["lora_rank"] else "every weight",
                         "train_min": round(t["train_time_s"] / 60, 1), "val_loss": t["val_loss"],
                         "held_out": report["agreement_val_stored"],
                         "dev": round(agreement(d.model, dev, local_ids(vocab, target.config.vocab_size), vocab), 4)})
            print(rows[-1], flush=True)
    hw = hardware()
    meta = {"family": "smollm2", "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
            "dtype": "float32", "cpu": hw.get("cpu"), "cpu_isa": hw.get("cpu_isa"), "torch": torch.__version__,
            "recipe": GROW_RECIPE,
            "command": "python benchmarks/grow_sweep.py " + shlex.join(sys.argv[1:])}
    head = (f"smollm2's grown rung against its size and data: top-1 agreement as stored, held out (2 % of the "
            f"training questions' answers) and on {args.prompts} GSM8K dev answers ({hw.get('cpu')}, "
            f"{hw.get('cpu_isa')}, {args.threads} threads)")
    print(write_table(Path(args.out), "sweep", head, rows,
                      ["point", "training", "layers", "answers", "epochs", "train_min", "val_loss", "held_out", "dev"],
                      meta, digits=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
