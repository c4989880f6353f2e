"""benchmarks/long_prompts.py on gsm8k-tiny (its 512 positions: short "long" prompts): a row per length with
every model's prefill and step, MaG's proposal times, and its tables; MaG's matched proposal is what
`MaG.propose` gives for that sequence."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_rows_per_length_and_the_written_tables(tmp_path):
    import long_prompts

    out = tmp_path / "lp"
    assert long_prompts.main(["--family", "gsm8k-tiny", "--lengths", "64,256", "--repeats", "1", "--threads", "1",
                              "--out", str(out)]) == 0
    d = json.loads((out / "long_prompts.json").read_text())
    assert [r["tokens"] for r in d["rows"]] == [64, 256] and d["family"] == "gsm8k-tiny"
    for r in d["rows"]:
        assert {"target prefill s", "target step ms", "mid prefill s", "small step ms", "MaG matched us",
                "MaG unmatched us", "MaG start us"} <= set(r)
        assert all(v > 0 for v in r.values())
        assert r["MaG / target step"] == r["MaG matched us"] / (r["target step ms"] * 1e3)
    md = (out / "long_prompts.md").read_text().splitlines()
    assert "gsm8k-tiny, float32, 1 thread(s)" in md[0] and md[2].startswith("| tokens | target prefill s |")
    assert len(md) == 6                                                    # caption, blank, head, rule, 2 rows


def test_the_prompt_is_spec_benchs_long_questions_cut_to_length():
    import long_prompts

    from csdlib import zoo

    fam = zoo.load("gsm8k-tiny")
    ids = long_prompts.long_text_ids(fam, None, 300)
    assert len(ids) == 300 and ids == long_prompts.long_text_ids(fam, None, 400)[:300]
