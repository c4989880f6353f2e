"""The notebooks under notebooks/: committed clean (no outputs, no execution counts), and each one runs
top to bottom without error (nbclient, kernel `python3` from this venv's ipykernel), with its scratch
paths (results, figures, caches) redirected to a temporary folder so a test run leaves the repository
as it was."""

import json
import pathlib
import subprocess
import sys
import time

import nbformat
import pytest

from csdlib.datasets import gsm8k_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import strip_notebook  # noqa: E402  (tools/strip_notebook.py, the git clean filter)

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
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05"]


def stored(path: pathlib.Path) -> str:
    """The notebook as git stores it (the index: what the next commit holds, after the clean filter
    `tools/strip_notebook.py`), so that a user's executed working copy does not fail this test; outside
    a git checkout, the file itself."""
    done = subprocess.run(["git", "show", f":{path.relative_to(ROOT)}"], cwd=ROOT, capture_output=True)
    return done.stdout.decode() if done.returncode == 0 else path.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    text = stored(path)
    assert notebook_problems(nbformat.reads(text, as_version=4)) == [], \
        f"{path.name}: strip it (`python3 tools/strip_notebook.py < {path.relative_to(ROOT)}`, or set up the " \
        "git filter, README 'Notebooks')"
    assert strip_notebook.dumps(strip_notebook.strip(json.loads(text))) == text, \
        f"{path.name} is not in the filter's layout: running it would show up in `git status`"


def test_filter_restores_the_committed_notebook():
    """What JupyterLab saves after Run All (outputs, counts, its metadata) is stripped back to the same bytes."""
    path = ROOT / "notebooks" / "03_acceptance_per_level.ipynb"
    committed = stored(path)
    nb = json.loads(committed)
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = i + 1
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]},
                           {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR..."}}]
        cell["metadata"]["scrolled"] = True
    nb["metadata"]["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
    nb["metadata"]["language_info"].update(version="3.11.7", pygments_lexer="ipython3", file_extension=".py")
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    executed = json.dumps(nb, indent=1)
    assert executed != committed
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "strip_notebook.py")], input=executed,
                          capture_output=True, text=True, check=True)
    assert done.stdout == committed


def test_figures_are_the_same_bytes_on_rerun(tmp_path):
    """Notebook 03's figures from the same records are byte-identical (seaborn's stripplot jitter is seeded),
    so rerunning the notebook does not rewrite the committed figures; numpy's global generator is left as
    it was."""
    import matplotlib
    import numpy as np
    from csdlib import plots, records

    matplotlib.use("Agg")
    df = records.load_results(ROOT / "data" / "results" / "reference" / "gsm8k-dev-n100-t128.jsonl")
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    for name in ("a", "b"):
        plots.accepted_per_target_call(df, tmp_path / f"{name}.png")
        _plt_close()
    assert np.random.random() == expected_next
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def _plt_close():
    import matplotlib.pyplot as plt
    plt.close("all")


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
        "05_grow_a_ladder": {"WORK": str(tmp / "grow"), "ANSWERS": 64, "STEPS": 30, "LAYERS": [1, 3], "N_PROMPTS": 3,
                             "MAX_NEW_TOKENS": 48},
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


def test_jupyter_config_strips_notebooks_before_save():
    """tools/jupyter_server_config.py (README: `jupyter lab --config ...`) sets a pre-save hook that turns
    an executed notebook into the committed one."""
    from traitlets.config import Config

    config = Config()
    source = (ROOT / "tools" / "jupyter_server_config.py").read_text()
    exec(compile(source, "jupyter_server_config.py", "exec"), {"get_config": lambda: config,
                                                               "__file__": str(ROOT / "tools" / "x.py")})
    hook = config.ContentsManager.pre_save_hook
    committed = stored(ROOT / "notebooks" / "00_quickstart.ipynb")
    nb = json.loads(committed)
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    nb["cells"][1]["execution_count"] = 1
    nb["metadata"]["language_info"]["version"] = "3.11.7"
    model = {"type": "notebook", "content": nb}
    hook(model=model, path="notebooks/00_quickstart.ipynb", contents_manager=None)
    assert strip_notebook.dumps(model["content"]) == committed
    text = {"type": "file", "content": "print(1)\n"}
    hook(model=text, path="x.py", contents_manager=None)
    assert text["content"] == "print(1)\n"


def test_setup_sets_threads_and_seeds_and_loads_the_family_on_first_use(monkeypatch):
    """csdlib.notebook.setup, the notebooks' first cell: torch's threads, every generator seeded, paths
    from the repository, the family loaded once (when first used) and the GSM8K prompts in its template."""
    import random

    import torch
    from csdlib import zoo
    from csdlib.datasets import load_gsm8k
    from csdlib.notebook import setup

    threads, loads, real_load = torch.get_num_threads(), [], zoo.load

    def load(name=None, **kw):
        loads.append(name)
        return real_load(name, **kw)

    monkeypatch.setattr(zoo, "load", load)
    try:
        nb = setup("gsm8k-tiny", threads=1, seed=7)
        assert torch.get_num_threads() == 1 and torch.initial_seed() == 7
        a = (random.random(), torch.rand(1).item())
        setup("gsm8k-tiny", threads=1, seed=7)
        assert (random.random(), torch.rand(1).item()) == a
    finally:
        torch.set_num_threads(threads)
    assert nb.path("tmp/x.jsonl") == ROOT / "tmp" / "x.jsonl" and nb.path("/abs/y") == pathlib.Path("/abs/y")
    assert loads == []                                             # nothing loaded before it is used
    fam = nb.family
    assert nb.family is fam and loads == ["gsm8k-tiny"] and fam.name == "gsm8k-tiny"
    assert fam.target.model.device.type == "cpu"
    assert (fam.target.cache, fam.target.compile) == ("dynamic", False)
    compiled = setup("gsm8k-tiny", threads=1, compile=True).family       # the notebooks' COMPILE = True
    neural = [m for m in [compiled.target, *compiled.drafters] if hasattr(m, "set_cache")]
    assert len(neural) == 3 and all((m.cache, m.compile) == ("static", True) for m in neural)
    torch.set_num_threads(threads)
    if gsm8k_dir() is not None:
        questions = load_gsm8k("dev")[:2]
        assert nb.questions(2) == questions
        assert nb.prompts(2) == [fam.prompt_ids(q["question"]) for q in questions]

