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


def test_tune_on_the_targets_own_requests_needs_a_chat_family(world, tmp_path, monkeypatch, capsys):
    """`--prompts-from requests`: the requests the target writes itself (stubbed here: generating them is
    `distill.self_instructions`, tested with the toy distillation) go through the chat template; a family
    without one is refused."""
    from csdlib import distill

    paths, bigram, data = world
    args = ["tune", "--objective", "parameters", "--target", str(paths["llama_7b"]),
            "--drafter", str(paths["JackFram/llama-160m"]), "--bigram", str(bigram), "--prompts-from", "requests",
            "--prompts", "1", "--max-new-tokens", "4", "--n-trials", "2", "--threads", "1", "--quiet",
            "--cache", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "t.json"), "--dtype", "float64"]
    assert main(args) == 2
    assert "--prompts-from requests: family 'custom' has no chat template" in capsys.readouterr().err
    asked = []

    def requests(model, tokenizer, n, cache=None, progress=True):
        asked.append(n)
        return ["Write a haiku about rain.", "Name three rivers."][:n]

    monkeypatch.setattr(distill, "tuning_requests", requests)
    out = tmp_path / "smol.json"
    assert main(["tune", "--family", "smollm2", "--objective", "parameters", "--prompts-from", "requests",
                 "--prompts", "2", "--max-new-tokens", "4", "--n-trials", "2", "--threads", "1", "--quiet",
                 "--cache", str(tmp_path / "s.jsonl"), "--out", str(out)]) == 0
    chosen = json.loads(out.read_text())
    assert asked == [2] and "--prompts-from requests" in chosen["chosen_by"]
    assert "the target's own requests (seed 1) 0..1" in chosen["chosen_by"] and "--offset" not in chosen["chosen_by"]


def test_csd_tune_with_the_suffix_drafter_at_the_bottom_records_it(tmp_path, capsys):
    """gsm8k-tiny with --bottom suffix: the cascade searched ends in the suffix drafter, and the chosen
    default says so (zoo.load and csd run then end the cascade in it)."""
    out = tmp_path / "tuned.json"
    args = ["tune", "--family", "gsm8k-tiny", "--bottom", "suffix", "--objective", "parameters",
            "--prompts", "1", "--max-new-tokens", "8", "--n-trials", "3", "--k-max", "2", "--threads", "1",
            "--cache", str(tmp_path / "c.jsonl"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    chosen = json.loads(out.read_text())
    assert chosen["bottom"] == "suffix" and "--bottom suffix" in chosen["chosen_by"]
    assert len(chosen["k_matrix"]) == 3
