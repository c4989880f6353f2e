"""JupyterLab for this project: every notebook is saved without outputs, execution counts and the
metadata Jupyter rewrites (`tools/strip_notebook.py`), so the saved file is byte for byte the committed
one and running the notebooks leaves `git status` clean. The outputs stay on screen while the notebook
is open; reopened, it starts clean. Jupyter reads this file from the folders in $JUPYTER_CONFIG_PATH;
from the repository root (README, "Notebooks"):

    JUPYTER_CONFIG_PATH=tools jupyter lab notebooks/
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strip_notebook import strip  # noqa: E402


def strip_before_save(model, **kwargs):
    if model.get("type") == "notebook" and model.get("content") is not None:
        strip(model["content"])


c = get_config()  # noqa: F821  (provided by Jupyter when it reads this file)
c.ContentsManager.pre_save_hook = strip_before_save
