"""Build the serving bento: `bentoml build -f serving/bentofile.yaml <repository root>`.

The bento packs the service, the s4d package and the served model: `model_tag` when given (passed as
S4D_MODEL_TAG, which the service reads), else whatever the environment and the service choose (the
champion's latest version). It runs as a subprocess: the build imports the service module, which reads its
settings and model tag from the environment. No container is built.

Used by the `package` stage, `s4d registry promote/rollback --build` and the serving tests. Imports nothing
of s4d, so any layer may call it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
BENTOFILE = ROOT / "serving" / "bentofile.yaml"
BUILD_TIMEOUT_S = 1800


class BentoBuildError(RuntimeError):
    """`bentoml build` failed, timed out, or built a bento without the model it was asked to pack."""


def bentoml_home(env: dict) -> Path:
    """The store a `bentoml` process started with `env` uses ($BENTOML_HOME, else ~/bentoml)."""
    return Path(env.get("BENTOML_HOME") or Path.home() / "bentoml")


def bento_model_tags(bento_tag: str, home: Path) -> list[str]:
    """The model tags a built bento packs, from its bento.yaml in the store at `home`."""
    import yaml

    name, version = bento_tag.split(":", 1)
    info = yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text()) or {}
    tags = []
    for entry in [info, *(info.get("services") or [])]:
        for model in entry.get("models") or []:
            if isinstance(model, dict) and str(model.get("tag")) not in tags:
                tags.append(str(model.get("tag")))
    return tags


def build_bento(model_tag: Optional[str] = None, bentofile: Path = BENTOFILE, build_ctx: Path = ROOT, *,
                version: Optional[str] = None, env: Optional[dict] = None, timeout: float = BUILD_TIMEOUT_S,
                log: Callable[[str], None] = print) -> dict:
    """Build the bento; returns {bento_tag, model_tags, build_seconds, built_at, bentofile}.

    env: extra environment of the build (e.g. BENTOML_HOME); version: the bento version (default: bentoml's).
    Raises BentoBuildError naming the cause (the build's last output lines)."""
    bentofile, build_ctx = Path(bentofile).resolve(), Path(build_ctx).resolve()  # the build runs in build_ctx
    if not bentofile.is_file():
        raise BentoBuildError(f"{bentofile} does not exist: cannot build the bento")
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1", **(env or {})}
    if model_tag:
        full_env["S4D_MODEL_TAG"] = model_tag
    exe = Path(sys.executable).with_name("bentoml")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "bentoml"]
    cmd += ["build", "-f", str(bentofile), "-o", "tag", str(build_ctx)]
    if version:
        cmd += ["--version", version]
    started = time.time()
    try:
        proc = subprocess.run(cmd, cwd=build_ctx, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BentoBuildError(f"bentoml build did not finish in {timeout:g} s") from None
    seconds = round(time.time() - started, 2)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            log(f"bentoml build: {line}")
    tags = [line.split("__tag__:", 1)[1].strip() for line in proc.stdout.splitlines() if "__tag__:" in line]
    if proc.returncode != 0 or not tags:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BentoBuildError(f"bentoml build failed (exit {proc.returncode}):\n{tail}")
    bento_tag = tags[-1]
    models = bento_model_tags(bento_tag, bentoml_home(full_env))
    if model_tag and model_tag not in models:
        raise BentoBuildError(f"bento {bento_tag} does not package {model_tag} (it has {models}); "
                              f"does {bentofile}'s service read S4D_MODEL_TAG?")
    return {"bento_tag": bento_tag, "model_tags": models, "build_seconds": seconds,
            "built_at": datetime.now(timezone.utc).isoformat(), "bentofile": str(bentofile)}
