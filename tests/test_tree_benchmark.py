"""benchmarks/tree.py in a quick form: every setting runs exact against the replayed target, and the rows
compare what they claim to (the chain ignores MaG's n-best successors; trees widen what is accepted)."""

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_tree_benchmark_rows(tmp_path):
    import tree

    assert tree.main(["--prompts", "2", "--max-new-tokens", "24", "--shapes", "3:0,4:3,4:3:2", "--deep", "0", "--mag", "3",
                      "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "out" / "tree.csv").set_index(["k-matrix", "tree"])
    sets = ["default", "MaG alone 3", "MaG alone 3, 1 successor"]
    assert list(dict.fromkeys(df.index.get_level_values(0))) == sets
    for k, depth in zip(sets, (6, 3, 3)):         # the default target row drafts 4 + 2 tokens
        assert list(df.loc[k].index) == ["chain", f"width 3 x {depth}, extend 0", f"width 4 x {depth}, extend 3",
                                         f"width 4 x {depth}, extend 3, budget 2"]
        budgeted, full = (df.loc[(k, f"width 4 x {depth}, extend 3" + b), "tokens fed/target call"] for b in (", budget 2", ""))
        assert budgeted < full                     # 2 extra candidates of (4 - 1) x depth: fewer tokens fed
        assert (df.loc[k, "tokens/target call"] >= 1).all() and df.loc[(k, "chain"), "accepted off the chain"] == 0
    # the chain never looks at the bigram table's other successors: both MaG sets run it identically
    assert df.loc[("MaG alone 3", "chain"), "tokens/target call"] == df.loc[("MaG alone 3, 1 successor", "chain"),
                                                                            "tokens/target call"]
    assert df.loc[("MaG alone 3", "chain"), "x chain, same k"] == 1
    assert (tmp_path / "out" / "tree.md").read_text().count("| MaG alone 3") == 8
