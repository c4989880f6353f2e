"""Every flag of every `csd` command is checked before any model or dataset loads: one line on stderr,
exit status 2, in well under 2 seconds; and every flag has help text with its default."""

import argparse
import os
import subprocess
import sys
import time

import pytest

from csdlib import cli, commands, zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE = os.path.join(ROOT, "pyproject.toml")            # a file that is not a folder
DIR = os.path.join(ROOT, "data", "models", "gsm8k-tiny", "target")    # a model folder
MISSING = os.path.join(ROOT, "no-such-folder")

BAD = [
    ("run --n-samples 0", "argument --n-samples: expected an integer >= 1, got 0"),
    ("run --n-samples -3", "argument --n-samples: expected an integer >= 1, got -3"),
    ("run --n-samples many", "argument --n-samples: expected an integer >= 1, got 'many'"),
    ("run --max-new-tokens 0", "argument --max-new-tokens: expected an integer >= 1, got 0"),
    ("run --threads 0", "argument --threads: expected an integer >= 1, got 0"),
    ("run --lenience 0.5", "argument --lenience: expected a number >= 1.0, got 0.5"),
    ("run --lenience -1", "argument --lenience: expected a number >= 1.0, got -1"),
    ("run --sd-k 0", "argument --sd-k: expected an integer >= 1"),
    ("run --warmup -1", "argument --warmup: expected an integer >= 0"),
    ("run --k-matrix [[4,4]", "argument --k-matrix: expected JSON"),
    ("run --k-matrix [[1,2]]", "argument --k-matrix: expected a square matrix"),
    ("run --k-matrix [[1,2],[3,4]]", "argument --k-matrix: entry [1][0] = 3: expected a non-negative integer, 0 below"),
    ("run --k-matrix [[1,-2],[0,4]]", "argument --k-matrix: entry [0][1] = -2"),
    ("run --k-matrix [[1,2.5],[0,4]]", "argument --k-matrix: entry [0][1] = 2.5"),
    ("run --k-matrix [[1]]", "--k-matrix: expected 3x3 for the drafters ['mid', 'small', 'MaG'], got 1x1"),
    ("run --family gsm8k-base --k-matrix [[1,1,1],[0,1,1],[0,0,1]]", "--k-matrix: expected 4x4 for the drafters"),
    (f"run --target {MISSING}", f"argument --target: no such directory: '{MISSING}'"),
    ("run --target ./models/target", "argument --target: no such directory: './models/target'"),
    (f"run --target {FILE}", "argument --target: no such directory"),
    (f"run --target {DIR}", "--target: needs --drafter (one or more, largest first)"),
    (f"run --target {DIR} --drafter {DIR}", "--target: needs --k-matrix (one row per drafter)"),
    (f"run --target {DIR} --drafter {DIR} --k-matrix [[1,1],[0,1]]", "--k-matrix: expected 1x1 for the drafters"),
    (f"run --target {DIR} --family gsm8k-tiny --drafter {DIR}", "--target: give your models or a family"),
    (f"run --drafter {DIR}", "--drafter: only with --target (the family brings its own models)"),
    (f"run --bigram {FILE}", "--bigram: only with --target"),
    (f"run --corpus {FILE}", "--corpus: only with --target"),
    (f"run --target {DIR} --drafter {DIR} --bottom suffix", "--bottom: only with a family"),
    (f"run --target {DIR} --drafter {DIR} --bigram {FILE} --corpus {FILE}", "--corpus: one free drafter ends a cascade"),
    ("run --bottom ngram", "argument --bottom: invalid choice: 'ngram'"),
    ("corpus --family gsm8k-huge", "argument --family: invalid choice: 'gsm8k-huge'"),
    ("corpus --answers 0", "argument --answers"),
    ("run --mag-k 3", "--mag-k: only with --target"),
    ("run --tree 0:1", "argument --tree: expected off or W:E[:B]"),
    ("run --tree 3", "argument --tree: expected off or W:E[:B]"),
    ("run --tree 3:1:0", "argument --tree: expected off or W:E[:B]"),
    ("run --mag-k 0", "argument --mag-k: expected an integer >= 1"),
    (f"run --bigram {MISSING}.json", "argument --bigram: no such file"),
    (f"run --data-dir {MISSING}", f"argument --data-dir: no such directory: '{MISSING}'"),
    ("run --methods CDS", "--methods: unknown ['CDS']; expected some of ['AR', 'SD(mid)', 'SD(small)', 'SD(MaG)', 'CSD', "
                          "'SD(suffix)', 'CSD (suffix at the bottom)']"),
    ("run --dataset gsm9k", "argument --dataset: invalid choice: 'gsm9k'"),
    ("run --split validation", "--split: GSM8K has train, dev and test, got 'validation'"),
    ("run --family gpt-5", "argument --family: invalid choice: 'gpt-5'"),
    ("run --dtype float8", "argument --dtype: invalid choice: 'float8'"),
    ("run --device gpu", "argument --device: expected cpu, cuda, cuda:<index> or mps, got 'gpu'"),
    ("run --device-map balanced", "argument --device-map: invalid choice"),
    ("run --name a/b", "argument --name: expected a file name without a folder"),
    (f"run --results-dir {FILE}", "--results-dir: '" + FILE + "' is a file, expected a directory"),
    ("tune --prompts 0", "argument --prompts: expected an integer >= 1"),
    ("tune --offset -1", "argument --offset: expected an integer >= 0"),
    ("tune --max-new-tokens 0", "argument --max-new-tokens: expected an integer >= 1"),
    ("tune --n-trials 0", "argument --n-trials: expected an integer >= 1"),
    ("tune --k-max 0", "argument --k-max: expected an integer >= 1"),
    ("tune --tree-max 4,6", "argument --tree-max: expected W,D,E: three integers"),
    ("tune --tree-max 0,2,2", "argument --tree-max: expected W,D,E: three integers, W >= 1"),
    ("tune --tree-max 2,x,1", "argument --tree-max: expected W,D,E"),
    ("tune --mag-k-max 0", "argument --mag-k-max: expected an integer >= 1"),
    ("tune --timeout 0", "argument --timeout: expected a number > 0, got '0'"),
    ("tune --objective speed", "argument --objective: invalid choice: 'speed'"),
    ("tune --threads 0", "argument --threads: expected an integer >= 1"),
    ("tune --lenience 0", "argument --lenience: expected a number >= 1.0"),
    ("tune --k-matrix [[1]]", "--k-matrix: expected 3x3 for the drafters"),
    ("calibrate --dtype float8", "argument --dtype: invalid choice: 'float8'"),
    (f"tune --family-path {MISSING}", "argument --family-path: no such directory"),
    (f"tune --family gsm8k-tiny --family-path {DIR}", "--family-path: give a family name or a folder, not both"),
    (f"tune --family-path {DIR}", f"family 'target' has no {DIR}/family.json (not trained yet)"),
    (f"tune --data-dir {MISSING}", "argument --data-dir: no such directory"),
    ("calibrate --repeats 0", "argument --repeats: expected an integer >= 1"),
    ("calibrate --context 0", "argument --context: expected an integer >= 1"),
    ("calibrate --threads 0", "argument --threads: expected an integer >= 1"),
    (f"calibrate --family-path {MISSING}", "argument --family-path: no such directory"),
    (f"seed-config {MISSING}.json", f"argument config: no such file: '{MISSING}.json'"),
    (f"seed-config {FILE} --model-path no-equals-sign", "argument --model-path: expected NAME=DIR, got 'no-equals-sign'"),
    (f"seed-config {FILE} --model-path gpt2={MISSING}", f"argument --model-path: no such directory: '{MISSING}'"),
    (f"seed-config {FILE} --n-samples 0", "argument --n-samples: expected an integer >= 1"),
    (f"seed-config {FILE} --max-new-tokens 0", "argument --max-new-tokens: expected an integer >= 1"),
    (f"seed-config {FILE} --bigram {MISSING}", "argument --bigram: no such file"),
    (f"seed-config {FILE} --threads 0", "argument --threads: expected an integer >= 1"),
    ("train --budget huge", "argument --budget: invalid choice: 'huge'"),
    ("train --threads 0", "argument --threads: expected an integer >= 1"),
    ("train --only large", "argument --only: invalid choice: 'large'"),
    ("train --family gsm8k-base --only mid", "--only: only with --family gsm8k-tiny"),
    ("train --family smollm2-general --only target", "--only: smollm2-general's target is fetched, not trained"),
    (f"train --family smollm2 --base {DIR}", "--base: only with --family smollm2-general"),
    (f"train --family smollm2-general --base {MISSING}", "argument --base: no such directory"),
    (f"train --data-dir {MISSING}", "argument --data-dir: no such directory"),
    ("train --from-target-layers 0", "argument --from-target-layers: expected an integer >= 1, got 0"),
    ("train --family gsm8k-tiny --from-target-layers 8", "--from-target-layers: grows a drafter for --family smollm2"),
    ("train --family smollm2 --name big", "--name: only with --from-target-layers"),
    ("train --family smollm2 --from-target-layers 8 --only mid", "--from-target-layers: grows one drafter"),
    (f"bigram --out {MISSING}", "argument --out: no such directory"),
    ("bigram --threads 0", "argument --threads: expected an integer >= 1"),
    ("report --n-dev 0", "argument --n-dev: expected an integer >= 1"),
    ("report --n-agree 0", "argument --n-agree: expected an integer >= 1"),
    ("report --max-new-tokens 0", "argument --max-new-tokens: expected an integer >= 1"),
    ("report --batch 0", "argument --batch: expected an integer >= 1"),
    ("report --show -1", "argument --show: expected an integer >= 0"),
    ("report --val-loss-only --latency-only", "--latency-only: not with --val-loss-only"),
    ("report --family gpt-5", "argument --family: invalid choice"),
]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading a model or a dataset fails the test: the flags must be refused before."""
    from csdlib import datasets

    def loaded(*a, **k):
        pytest.fail("a model or dataset was loaded before the flags were checked")
    for module, name in [(zoo, "load"), (zoo, "load_model"), (zoo, "from_paths"), (datasets, "load_gsm8k"),
                         (datasets, "prompt_texts")]:
        monkeypatch.setattr(module, name, loaded)


@pytest.mark.parametrize("argv, message", BAD, ids=[a for a, _ in BAD])
def test_bad_flag_is_one_line_and_exit_status_2(argv, message, nothing_loads, capsys):
    command = argv.split()[0]
    tic = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv.split())
    assert time.perf_counter() - tic < 2
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"csd {command}: error: {message}")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_tree_csd_is_a_method_only_with_a_tree(nothing_loads, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--methods", "tree CSD"])
    assert exit_.value.code == 2 and "--methods: unknown ['tree CSD']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--methods", "tree CSD", "--tree", "3:0", "--data-dir", "/nonexistent"])
    assert "--methods" not in capsys.readouterr().err           # accepted; the next check fails instead


def test_a_bad_flag_answers_at_once_without_torch():
    """As a user meets it: a new process, no torch / transformers / pandas imported, under 2 seconds."""
    code = ("import sys\nfrom csdlib.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    print(e.code)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'pandas', 'numpy'}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for argv in (["run", "--n-samples", "0"], ["run", "--k-matrix", "[[1]]"], ["run", "--target", MISSING]):
        tic = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True,
                              timeout=60)
        assert time.perf_counter() - tic < 2, argv
        assert done.stdout.splitlines() == ["2", "[]"], done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("csd run: error: ")


def subparsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices


@pytest.mark.parametrize("command", ["run", "tune", "calibrate", "seed-config", "train", "bigram", "report"])
def test_every_flag_has_help_and_its_default(command):
    parser = subparsers()[command]
    text = parser.format_help()
    for action in parser._actions:
        assert action.help, f"csd {command} {action.option_strings or action.dest}: no help"
        if action.option_strings and action.default is not None and action.default is not False \
                and action.default not in ([], argparse.SUPPRESS):
            assert "default" in parser.formatter_class("csd")._get_help_string(action), action.dest
    if "--family" in text:
        assert f"(default: {zoo.DEFAULT_FAMILY}" in " ".join(text.split())       # the value, not its name
    if "--data-dir" in text:
        assert "../shared/datasets" in " ".join(text.split())


def test_choices_written_out_are_the_recipes():
    from csdlib import recipe

    train = {a.dest: a for a in subparsers()["train"]._actions}
    assert train["budget"].choices == list(recipe.BUDGETS)
    assert train["only"].choices == list(recipe.MODEL_NAMES) == list(zoo.MODEL_NAMES)
    assert train["family"].choices == list(zoo.FAMILY_DIRS)


def test_terminal_table_fits_100_columns_and_wide_shows_all():
    import pandas as pd

    row = {"samples": 100, "new_tokens": 12345, "SWI measured": 1.71, "SWI parameters": 2.06, "SWI latency": 1.5,
           "wall speedup": 0.89, "tokens/s": 167.42, "tokens/target call": 2.91,
           "acceptance per level": "0.16 / 0.65 / 0.05 / 0.50", "alpha (target)": 0.66, "predicted SWI": 1.6,
           "identical": 100, "tie": 0, "WRONG": 0, "predicted / measured": 0.98, "threads": "2"}
    summary = pd.DataFrame([row] * 6, index=pd.Index(["AR", "SD(tiny)", "SD(mid)", "SD(small)", "SD(MaG)", "CSD"],
                                                      name="method"))
    narrow = commands.table(commands.with_audit_column(summary), columns=commands.TERMINAL_COLUMNS)
    assert max(map(len, narrow.splitlines())) <= 100
    assert "0.16/0.65/0.05/0.50" in narrow and "tokens/s" not in narrow and "measured" not in narrow
    wide = commands.table(summary)
    assert all(h.split(" ")[0] in wide for h in row) and max(map(len, wide.splitlines())) > 100


def test_train_bigram_and_report_call_the_recipe_and_the_report(monkeypatch, tmp_path):
    """`csd train / bigram / report` are what `python -m csdlib.zoo train / bigram` and
    `benchmarks/zoo_report.py` were (the recipe itself is tested in tests/test_zoo.py)."""
    from csdlib import recipe, report

    calls = []
    monkeypatch.setattr(recipe, "train_family", lambda *a, **k: calls.append(("family", a, k)))
    monkeypatch.setattr(recipe, "train_base", lambda *a, **k: calls.append(("base", a, k)))
    monkeypatch.setattr(recipe, "build_bigram_table", lambda *a, **k: calls.append(("bigram", a, k)))
    monkeypatch.setattr(report, "main", lambda args: calls.append(("report", args.family_path, args.n_dev)))
    assert cli.main(["train", "--budget", "toy", "--out", str(tmp_path), "--only", "mid", "--seed", "3"]) == 0
    assert cli.main(["train", "--family", "gsm8k-base"]) == 0
    assert cli.main(["bigram", "--out", str(tmp_path)]) == 0
    assert cli.main(["report", "--family-path", str(zoo.FAMILY_DIRS["gsm8k-tiny"]), "--n-dev", "5"]) == 0
    assert calls == [("family", (str(tmp_path), None, "toy", 3), {"only": ["mid"]}),
                     ("base", (None, None, "full", 0), {}),
                     ("bigram", (str(tmp_path), None), {}),
                     ("report", str(zoo.FAMILY_DIRS["gsm8k-tiny"]), 5)]
