"""Git clean filter for the notebooks: what git stores is the notebook without outputs, execution counts
and the metadata Jupyter rewrites on every save, so running the notebooks leaves `git status` clean while
your copy keeps its outputs. Set it up once per clone (README, "Notebooks"):

    git config filter.strip-notebook.clean "python3 tools/strip_notebook.py"

(`.gitattributes` applies it to `*.ipynb`). Reads a notebook on stdin, writes the stripped one on stdout
in Jupyter's own layout (indent 1, sorted keys). Plain json, so any python3 runs it.
"""

import json
import sys

# the notebook-level metadata we commit: Jupyter adds language_info details and its kernel display name
METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}
# cell metadata that only records how a cell was last shown or run
VOLATILE_CELL_METADATA = ("collapsed", "scrolled", "execution", "ExecuteTime")


def strip(nb: dict) -> dict:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in VOLATILE_CELL_METADATA:
            cell.get("metadata", {}).pop(key, None)
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k not in ("widgets",)}
    nb["metadata"].update(METADATA)
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dumps(strip(json.load(sys.stdin))))
