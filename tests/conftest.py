import os

import s4d  # noqa: E402,F401  (first, before torch loads: it sets OpenMP's wait policy)

# Tests never reach the network or send telemetry.
for key, value in {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
                   "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(key, value)


import contextlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# A model small enough that a test step takes milliseconds, as params.yaml overrides.
MICRO_MODEL = ["models.tiny.img_size=32", "models.tiny.patch_size=8", "models.tiny.num_frames=4",
               "models.tiny.embed_dim=64", "models.tiny.depth=2", "models.tiny.num_heads=2",
               "models.tiny.decoder_dim=32", "models.tiny.decoder_depth=1", "models.tiny.decoder_heads=2",
               "models.tiny.moae.layers=1", "models.tiny.moae.bottleneck=16", "data.workers=0"]


def write_micro_dataset(root: Path, n_videos: int = 24, n_images: int = 48, size: int = 40, frames: int = 6,
                        classes: int = 3) -> None:
    """Prepared manifests (all splits) over tiny frame folders whose colour and motion encode the class."""
    from s4d.data.manifest import make_manifest, write_manifest

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 100, size, dtype=np.float32)
    background = (ramp[None, :, None] + ramp[:, None, None] * 0.5).repeat(3, axis=2)  # smooth, predictable

    def frame(label):
        img = background + rng.normal(0, 3, (size, size, 3))
        img[..., label] += 100
        return img.clip(0, 255).astype(np.uint8)

    rows = {"dynamic": [], "static": []}
    splits = ["train"] * 4 + ["val", "test"]
    for i in range(n_videos):
        label = i % classes
        folder = root / "frames" / f"{i:05d}"
        folder.mkdir(parents=True)
        for t in range(frames):
            img = frame(label)
            x = (4 + 5 * t) if label != 2 else (size - 8 - 5 * t)  # class 2 moves the other way
            cv2.rectangle(img, (x, 10), (x + 6, 30), (255, 255, 255), -1)
            cv2.imwrite(str(folder / f"{t + 1:05d}.jpg"), img)
        rows["dynamic"].append(dict(id=f"{i:05d}", path=f"frames/{i:05d}", label=label, label_name=f"c{label}",
                                    label_set="folder:c0,c1,c2", modality="video", split=splits[i % 6], fold=0,
                                    num_frames=frames, height=size, width=size, source="test", group=""))
    (root / "images").mkdir()
    for i in range(n_images):
        label = i % classes
        cv2.imwrite(str(root / "images" / f"{i:05d}.jpg"), frame(label))
        rows["static"].append(dict(id=f"i{i:05d}", path=f"images/{i:05d}.jpg", label=label, label_name=f"c{label}",
                                   label_set="folder:c0,c1,c2", modality="image", split=splits[i % 6], fold=0,
                                   num_frames=1, height=size, width=size, source="test", group=""))
    for task, task_rows in rows.items():
        write_manifest(make_manifest(task_rows), root / "artifacts" / "prepared" / f"{task}.csv")
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())


@pytest.fixture
def micro_project(tmp_path, monkeypatch):
    """A project folder (params.yaml + prepared micro dataset) as the working directory."""
    write_micro_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run `python -m module args` as a real process; return the CompletedProcess (output captured)."""
    import os

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def bentoml_home(home: str | Path) -> Iterator[Path]:
    """Point BentoML, in this process and in the subprocesses it starts meanwhile, at a fresh store in
    `home`. BentoML reads $BENTOML_HOME once per process, so the in-process stores are swapped too (its
    internal containers: a test helper, never product code)."""
    import os

    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home = Path(home).resolve()
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "bentos").mkdir(parents=True, exist_ok=True)
    old = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    c = BentoMLContainer
    try:
        with c.bentoml_home.patch(str(home)), c.model_store_dir.patch(str(home / "models")), \
                c.bento_store_dir.patch(str(home / "bentos")), c.tmp_bento_store_dir.patch(str(home / "tmp")), \
                c.model_store.patch(ModelStore(str(home / "models"))), \
                c.bento_store.patch(BentoStore(str(home / "bentos"))):
            yield home
    finally:
        if old is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = old


# The toy dataset and its S4D fine-tune, shared by test_finetune.py and test_evaluate.py (built once per
# session). Modules using them run their tests single-threaded: pytestmark = usefixtures("one_thread").
@pytest.fixture(scope="module")
def one_thread():
    import toydata

    with toydata.single_thread():
        yield


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    """The toy dataset folder (media + prepared manifests)."""
    import toydata

    return toydata.toy_root(tmp_path_factory)


@pytest.fixture(scope="session")
def joint(root):
    """The S4D run (defaults: static steps + MoAE) on the toy data -> (out_dir, summary)."""
    import toydata

    return toydata.run_finetune(root, "joint")


# A Prefect API of its own for the flow tests (one per session: it takes seconds to start).
@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect_home")
    with temporary_settings({PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage"}):
        with prefect_test_harness(server_startup_timeout=90):
            yield home
