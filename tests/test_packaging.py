"""environment.yml (conda users) lists exactly pyproject.toml's dependencies."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        wanted |= set(extra)
    listed = {line.strip()[2:].strip() for line in (ROOT / "environment.yml").read_text().splitlines()
              if line.strip().startswith("- ") and not line.strip().startswith("- -e")}
    listed -= {"python=3.11", "pip", "pip:", "conda-forge"}
    assert listed == wanted
