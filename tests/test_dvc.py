"""The DVC project: every stage is a real entry point with declared params, and the default remote works."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT
from s4d.config import Params, to_dict

DVC = [sys.executable, "-m", "dvc"]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def lookup(tree: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def test_stages_are_python_modules_with_known_params():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(pipeline) == ["prepare", "validate", "pretrain", "finetune", "evaluate", "gate", "package"]
    schema = to_dict(Params())
    for name, stage in pipeline.items():
        module = stage["cmd"].removeprefix("python -m ").split()[0]
        assert importlib.util.find_spec(module) is not None, (name, module)
        for key in stage.get("params", []):
            assert lookup(schema, key), f"stage {name}: params key {key} is not in the schema"
    dag = subprocess.run([*DVC, "dag", "--md"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert dag.returncode == 0, dag.stderr
    assert "prepare" in dag.stdout and "package" in dag.stdout


def test_default_remote_push_and_pull(tmp_path):
    """The project's default remote (.dvc-remote inside the project, git-ignored) round-trips data."""
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    shutil.copytree(ROOT / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (project / "data").mkdir()
    (project / "data" / "a.txt").write_text("frames")
    run = lambda *args: subprocess.run([*DVC, *args], cwd=project, env=ENV, capture_output=True, text=True)  # noqa: E731
    assert run("add", "data").returncode == 0
    assert run("push").returncode == 0
    assert (project / ".dvc-remote").is_dir()
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    pulled = run("pull")
    assert pulled.returncode == 0, pulled.stderr
    assert (project / "data" / "a.txt").read_text() == "frames"
    assert ".dvc-remote" in (ROOT / ".gitignore").read_text()
