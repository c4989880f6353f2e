"""The notebooks under notebooks/: committed clean (no outputs, no execution counts), and each one runs
top to bottom without error (nbclient, kernel `python3` from this venv's ipykernel), with its scratch
paths (results, figures, caches) redirected to a temporary folder so a test run leaves the repository
as it was."""

import pathlib
import time

import nbformat
import pytest

from csdlib.datasets import gsm8k_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def notebook_problems(nb) -> list[str]:
    """Why a notebook is not clean: outputs or execution counts left in, or no `parameters` cell."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has an execution count")
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"expected one cell tagged 'parameters', found {len(tagged)}")
    return problems


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    assert notebook_problems(nbformat.read(path, as_version=4)) == [], \
        f"{path.name}: strip it (e.g. `jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}`)"


def test_checker_catches_outputs():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1", metadata={"tags": ["parameters"]})
    nb.cells = [cell]
    assert notebook_problems(nb) == []
    cell.execution_count = 1
    cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]
    assert notebook_problems(nb) == ["cell 0 has outputs", "cell 0 has an execution count"]


def overrides(path: pathlib.Path, tmp: pathlib.Path) -> dict:
    """Parameters CI sets: scratch outputs under `tmp` (absolute paths win over the repository root)."""
    common = {"FIGURES_DIR": str(tmp / "figures")}
    return {
        "01_build_bigram_table": {"OUT_PATH": str(tmp / "bigram.json")},
        "02_run_experiments": {**common, "RESULTS": str(tmp / "results.jsonl"), "N_SAMPLES": 3,
                               "MAX_NEW_TOKENS": 48},
        "03_acceptance_per_level": {**common, "RESULTS": str(tmp / "results03.jsonl"), "N_SAMPLES": 3,
                                    "MAX_NEW_TOKENS": 48},
        "04_tune_k_matrix": {"CACHE": str(tmp / "cache.jsonl")},
    }.get(path.stem, {}) | {"THREADS": 1}      # pytest-xdist runs two notebooks at once on CI's cores


def inject(nb, params: dict):
    """Papermill-style: a cell right after the `parameters` cell that overrides its values."""
    if not params:
        return nb
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    src = "# injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    return nb


@pytest.mark.skipif(gsm8k_dir() is None, reason="GSM8K not found ($CSD_DATA_DIR, default ../shared/datasets)")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = inject(nbformat.read(path, as_version=4), overrides(path, tmp_path))
    tic = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    print(f"{path.name}: {time.perf_counter() - tic:.0f} s")
