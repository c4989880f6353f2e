"""`csd tune` and `csd calibrate` on tiny stand-in models (not the trained family)."""

import json

import pytest
import seedfixtures as sf

from csdlib.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    return sf.write_models(root), sf.write_bigram(root / "bigram.json"), sf.write_data(root / "data")


def test_csd_tune_own_models_swi(world, tmp_path, capsys):
    paths, bigram, data = world
    out = tmp_path / "tuned.json"
    args = ["tune", "--objective", "parameters", "--target", str(paths["llama_7b"]),
            "--drafter", str(paths["JackFram/llama-160m"]), "--bigram", str(bigram), "--data-dir", str(data),
            "--prompts", "2", "--offset", "1", "--max-new-tokens", "8", "--n-trials", "4", "--k-max", "3",
            "--mag-k-max", "4", "--threads", "1", "--cache", str(tmp_path / "c.jsonl"), "--out", str(out),
            "--quiet", "--dtype", "float64", "--k-matrix", "[[1, 1], [0, 1]]"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 trials in" in printed and "start: k_matrix=[[1, 1], [0, 1]]" in printed
    chosen = json.loads(out.read_text())
    assert len(chosen["k_matrix"]) == 2 and chosen["objective"] == "parameters" and chosen["threads"] == 1
    assert all(0 <= v <= 4 for row in chosen["k_matrix"] for v in row)
    assert chosen["value"] > 0 and "--offset 1" in chosen["chosen_by"]
    assert chosen["mag_k"] == max(1, chosen["k_matrix"][0][1], chosen["k_matrix"][1][1])


def test_save_default_keeps_the_previous_one(tmp_path):
    from csdlib.tuning import save_default

    (tmp_path / "family.json").write_text(json.dumps({"name": "x", "default": {"k_matrix": [[1]]}}))
    save_default(tmp_path, {"k_matrix": [[3]], "lenience": 1.0, "mag_k": 1})
    info = json.loads((tmp_path / "family.json").read_text())
    assert info["default"]["k_matrix"] == [[3]] and info["previous_default"] == {"k_matrix": [[1]]}


def test_a_cascade_tuned_for_a_dtype_is_what_zoo_load_uses_in_that_dtype(tmp_path):
    """`csd tune --dtype bfloat16` writes `defaults["bfloat16"]`; float32 keeps `default`."""
    from csdlib import zoo
    from csdlib.tuning import save_default

    tiny = zoo.FAMILY_DIRS["gsm8k-tiny"]
    for name in ("tokenizer", "target", "mid", "small", "bigram.json"):
        (tmp_path / name).symlink_to(tiny / name)
    (tmp_path / "family.json").write_text((tiny / "family.json").read_text())
    save_default(tmp_path, {"k_matrix": [[0, 3, 1], [0, 2, 0], [0, 0, 1]], "lenience": 1.0, "mag_k": 3},
                 dtype="bfloat16")
    info = json.loads((tmp_path / "family.json").read_text())
    assert info["default"] == json.loads((tiny / "family.json").read_text())["default"]
    assert zoo.load(path=tmp_path, dtype="bfloat16").k_matrix == [[0, 3, 1], [0, 2, 0], [0, 0, 1]]
    assert zoo.load(path=tmp_path).k_matrix == info["default"]["k_matrix"]
