"""Bad input gets a ValueError naming the argument and what was expected — never a wrong answer."""

import json

import pytest

import csdlib
from csdlib import BigramTable, CSDValueError, HFModel, MaG

from tiny import VOCAB, llama, t5


@pytest.fixture(scope="module")
def models():
    return llama(0), llama(1, hidden=16, layers=1), MaG(BigramTable([0] * VOCAB), k=3)


def gen(target, drafters, prompt=(1, 2, 3), **kw):
    kw.setdefault("max_new_tokens", 4)
    return csdlib.generate(target, drafters, list(prompt), **kw)


@pytest.mark.parametrize("k_matrix, message", [
    ([[1, 2]], r"k_matrix: expected a square matrix"),
    ([[1, 2], [3]], r"k_matrix: expected a square matrix"),
    ([[1]], r"k_matrix: expected 2x2 for 2 drafter\(s\), got 1x1"),
    ([[1, 2], [3, 4]], r"k_matrix\[1\]\[0\]: expected 0 below the diagonal"),
    ([[1, -2], [0, 4]], r"k_matrix\[0\]\[1\]: expected a non-negative integer"),
    ([[1, 2.5], [0, 4]], r"k_matrix\[0\]\[1\]: expected a non-negative integer"),
    ([[1, "2"], [0, 4]], r"k_matrix\[0\]\[1\]: expected a non-negative integer"),
    (None, r"k_matrix: required with drafters"),
])
def test_bad_k_matrix(models, k_matrix, message):
    target, small, mag = models
    with pytest.raises(ValueError, match=message):
        gen(target, [small, mag], k_matrix=k_matrix)


@pytest.mark.parametrize("lenience", [0.5, 0, -1, "2", None])
def test_bad_lenience(models, lenience):
    target, small, mag = models
    with pytest.raises(ValueError, match=r"lenience: expected a number >= 1"):
        gen(target, [small, mag], k_matrix=[[1, 2], [0, 3]], lenience=lenience)


def test_vocabulary_mismatch(models):
    target, _, _ = models
    other = llama(2, vocab=VOCAB + 4)
    with pytest.raises(ValueError, match=r"drafters\[0\].*vocabulary size 100, expected the target's 96"):
        gen(target, [other], k_matrix=[[2]])
    with pytest.raises(ValueError, match=r"drafters\[0\].*vocabulary size 10"):
        gen(target, [MaG(BigramTable([0] * 10))], k_matrix=[[2]])


def test_empty_prompt(models):
    with pytest.raises(ValueError, match="prompt_ids: expected at least one token"):
        gen(models[0], [], prompt=[])


def test_prompt_ids_outside_vocabulary(models):
    with pytest.raises(ValueError, match="prompt_ids: token id 96 is outside"):
        gen(models[0], [], prompt=[1, 96])


def test_batched_prompt_is_refused(models):
    import torch
    with pytest.raises(ValueError, match="prompt_ids: batch size 1 expected"):
        csdlib.generate(models[0], [], torch.ones(2, 3, dtype=torch.long))


def test_beyond_position_limit(models):
    target, small, _ = models          # max_position_embeddings = 192
    with pytest.raises(ValueError, match=r"max_new_tokens: prompt \(100 tokens\) \+ max_new_tokens \(93\).*limit of 192"):
        gen(target, [small], prompt=[1] * 100, k_matrix=[[2]], max_new_tokens=93)
    assert len(gen(target, [small], prompt=[1] * 100, k_matrix=[[2]], max_new_tokens=92).new_tokens) == 92


@pytest.mark.parametrize("bad", [-1, 2.0, "8"])
def test_bad_max_new_tokens(models, bad):
    with pytest.raises(ValueError, match="max_new_tokens: expected a non-negative int"):
        gen(models[0], [], max_new_tokens=bad)


def test_mag_must_be_last_and_cannot_be_target(models):
    target, small, mag = models
    with pytest.raises(ValueError, match=r"drafters\[0\]: 'mag' can only be the last drafter \(a free drafter such as MaG"):
        gen(target, [mag, small], k_matrix=[[1, 1], [0, 1]])
    with pytest.raises(ValueError, match="target: 'mag' cannot be the target"):
        gen(mag, [small], k_matrix=[[1]])


def test_same_wrapper_twice(models):
    target, _, _ = models
    wrapped = HFModel(target)
    with pytest.raises(ValueError, match="same model object appears twice"):
        gen(wrapped, [wrapped], k_matrix=[[2]])


def test_mixed_model_kinds(models):
    with pytest.raises(ValueError, match="mixing decoder-only and encoder-decoder"):
        gen(models[0], [t5(0)], k_matrix=[[2]])


def test_wrong_vocab_bigram_file(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps([0] * 10))
    with pytest.raises(ValueError, match=r"bigram table .*t.json' has vocab_size 10, expected 96"):
        BigramTable.load(tmp_path / "t.json", vocab_size=VOCAB)


def test_not_a_model():
    with pytest.raises(CSDValueError, match="model: expected a transformers model"):
        csdlib.generate("gpt2", [], [1, 2])


def test_every_raise_in_csdlib_is_part_of_the_error_contract():
    """No bare ValueError / TypeError / FileNotFoundError / SystemExit, no `except Exception` (hub calls
    are caught narrowly): bad input is a CSDValueError or MissingFileError naming the argument."""
    import pathlib
    import re

    root = pathlib.Path(csdlib.__file__).parent
    bad = []
    for path in sorted(root.glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"raise (ValueError|TypeError|FileNotFoundError|KeyError|SystemExit)\b|except Exception\b",
                         line):
                bad.append(f"{path.name}:{n}: {line.strip()}")
    assert bad == []


def test_command_line_errors_name_the_argument(tmp_path, capsys):
    """A bad flag is refused by the parser (tests/test_cli_flags.py has them all); bad input found later,
    such as a config file that is not JSON, is one line too, with exit status 2."""
    from csdlib.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["seed-config", str(tmp_path / "nope.json")])
    assert exit_.value.code == 2 and "csd seed-config: error: argument config: no such file" in capsys.readouterr().err
    (tmp_path / "c.json").write_text("{")
    assert main(["seed-config", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csd seed-config: error: config: ") and "is not JSON" in err and err.count("\n") == 1


def test_recipe_and_loader_errors_name_the_argument():
    from csdlib import recipe, zoo

    with pytest.raises(CSDValueError, match="epochs / steps: give one of them"):
        recipe.train_model({}, [[1, 2]], None)
    with pytest.raises(CSDValueError, match="budget: unknown budget 'huge'"):
        recipe.train_family("/nonexistent", budget="huge")
    with pytest.raises(CSDValueError, match="name: unknown family 'gpt-5'"):
        zoo.load("gpt-5")


def test_the_core_imports_none_of_the_other_layers():
    """Layering: notebooks/plots -> runs (experiment, tuning, cli, compat) -> core (cascade and its protocol,
    sampling settings and argument checks, models, mag, stats), metrics (cost), data (datasets, zoo,
    recipe); the core imports only itself."""
    import ast
    import pathlib

    root = pathlib.Path(csdlib.__file__).parent
    core = {"cascade", "protocol", "sampling", "checks", "models", "mag", "stats", "errors"}
    for name in sorted(core):
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        assert imported <= core, f"csdlib/{name}.py imports {sorted(imported - core)}"
