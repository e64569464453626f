"""Champion registry (BentoML model store): promote, rollback, history, CLI; and the package stage."""
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, bentoml_home, run_module
from s4d import registry
from s4d.config import load_params
from s4d.io import sha256_file
from s4d.package import PackageError, package

# A stand-in for serving/ (owned by the serving side): a service whose model comes from S4D_MODEL_TAG.
STUB_SERVICE = '''
import os
import bentoml


@bentoml.service
class Stub:
    model = bentoml.models.BentoModel(os.environ.get("S4D_MODEL_TAG", "s4d-champion:latest"))

    @bentoml.api
    def ping(self) -> str:
        return str(self.model.tag)
'''
STUB_BENTOFILE = 'service: "stub_service:Stub"\ninclude: ["/stub_service.py"]\npython:\n  lock_packages: false\n'


def make_checkpoint(path: Path, seed: int) -> Path:
    """A real (micro) classifier checkpoint: the store refuses anything else. Each seed, other weights."""
    import torch

    from s4d.config import MoAEConfig, ModelConfig
    from s4d.models.checkpoint import save_checkpoint
    from s4d.models.classifier import S4DClassifier

    torch.manual_seed(seed)
    cfg = ModelConfig(img_size=16, patch_size=8, num_frames=2, tubelet_size=2, embed_dim=16, depth=1, num_heads=2,
                      decoder_dim=16, decoder_depth=1, decoder_heads=2,
                      moae=MoAEConfig(layers=1, experts=2, top_k=1, bottleneck=4))
    names = ["c0", "c1", "c2"]
    save_checkpoint(path, S4DClassifier(cfg, 3, 3), meta={"labels": {"dynamic": names, "static": names},
                                                          "epoch": seed})
    return path


def write_stub_serving(root: Path) -> Path:
    (root / "stub_service.py").write_text(STUB_SERVICE)
    (root / "serving").mkdir(exist_ok=True)
    bentofile = root / "serving" / "bentofile.yaml"
    bentofile.write_text(STUB_BENTOFILE)
    return bentofile


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with bentoml_home(tmp_path / "bentoml") as h:
        yield h


def candidate(root: Path, name: str, uar: float) -> str:
    ckpt = make_checkpoint(root / f"{name}.pt", seed=ord(name[0]))
    meta = {"metrics": {"dynamic": {"uar": uar, "war": uar + 0.1}, "dataset": "x"},
            "params": {"profile": "tiny", "nothing": None, "folds": [1, None]},
            "data_version": {"id": f"data-{name}", "git_rev": "abc"}}
    return registry.save_to_store(ckpt, metadata=meta)


def test_promote_and_rollback_walk_the_champion_stack(home, tmp_path):
    assert registry.current_champion() is None and registry.history() == []
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.rollback()
    a, b, c = (candidate(tmp_path, n, u) for n, u in (("a", 0.5), ("b", 0.6), ("c", 0.7)))

    ca = registry.promote(a)
    assert ca.name == "s4d-champion" and ca.revision == 1 and ca.source == a and ca.stack_below == []
    assert ca.metrics["dynamic"]["uar"] == 0.5 and ca.data_version["id"] == "data-a"
    assert ca.labels["stage"] == "champion" and ca.labels["uar"] == "0.5000" and ca.labels["data"] == "data-a"
    assert ca.metadata["data_version"] == "manifests:data-a git:abc data.dvc:-"  # serving's contract: a string
    # bentoml metadata takes basic types only: None dropped from a mapping, "null" keeps its place in a list
    assert ca.metadata["params"] == {"profile": "tiny", "folds": [1, "null"]}
    assert ca.metadata["labels"]["dynamic"] == ["c0", "c1", "c2"]  # serving's class names travel along
    assert Path(ca.checkpoint).read_bytes() == (tmp_path / "a.pt").read_bytes()
    assert ca.checkpoint_sha256 == sha256_file(tmp_path / "a.pt")
    with pytest.raises(registry.RegistryError, match="is the first champion"):
        registry.rollback()

    cb = registry.promote(b)
    cc = registry.promote(c)
    assert registry.current_champion().tag == cc.tag and cc.stack_below == [ca.tag, cb.tag]
    assert [r.source for r in registry.history()] == [a, b, c]

    r1 = registry.rollback()  # back to b
    assert r1.action == "rollback" and r1.source == b and r1.revision == 4
    assert Path(r1.checkpoint).read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert r1.metrics["dynamic"]["uar"] == 0.6
    assert r1.metadata["restores"] == cb.tag and r1.metadata["previous"] == cc.tag
    assert registry.current_champion().tag == r1.tag
    import bentoml
    assert str(bentoml.models.get("s4d-champion:latest").tag) == r1.tag  # what serving loads

    r2 = registry.rollback()  # one further back: a
    assert r2.source == a and r2.stack_below == []
    with pytest.raises(registry.RegistryError, match="first champion"):
        registry.rollback()
    assert len(registry.history()) == 5 and len(registry.candidates()) == 3  # nothing is ever lost

    with pytest.raises(registry.RegistryError, match="promote a candidate"):
        registry.promote(r2.tag)
    with pytest.raises(registry.RegistryError, match="not found|s4d-dfer:nope"):
        registry.promote("s4d-dfer:nope")


def test_cli_promote_rollback_show_list(home, tmp_path):
    a, b = candidate(tmp_path, "a", 0.5), candidate(tmp_path, "b", 0.6)
    env = {"BENTOML_HOME": str(home)}
    for tag in (a, b):
        out = run_module("s4d.registry", "promote", tag, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
    shown = run_module("s4d.registry", "--json", "show", cwd=tmp_path, env=env)
    assert json.loads(shown.stdout)["source"] == b
    write_stub_serving(tmp_path)
    back = run_module("s4d.registry", "rollback", "--build", cwd=tmp_path, env=env)  # and rebuild the bento
    assert back.returncode == 0, back.stderr
    assert registry.current_champion().source == a
    built = json.loads((tmp_path / "artifacts/package/bento.json").read_text())
    assert built["champion"] == registry.current_champion().tag and built["model_tags"] == [built["champion"]]
    assert built["via"] == "registry rollback" and f"bento {built['bento_tag']}" in back.stdout
    listed = json.loads(run_module("s4d.registry", "--json", "list", cwd=tmp_path, env=env).stdout)
    assert listed["champion"] == registry.current_champion().tag
    assert [c["action"] for c in listed["champions"]] == ["promote", "promote", "rollback"]
    assert len(listed["candidates"]) == 2
    text = run_module("s4d.registry", "list", cwd=tmp_path, env=env).stdout
    assert "* " + listed["champion"] in text
    again = run_module("s4d.registry", "rollback", cwd=tmp_path, env=env)
    assert again.returncode == 1 and "first champion" in again.stderr


def test_data_version_hashes_the_manifests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    params = load_params("params.yaml")
    (tmp_path / "artifacts/prepared").mkdir(parents=True)
    (tmp_path / "artifacts/prepared/dynamic.csv").write_text("a\n")
    first = registry.data_version(params)
    assert first["manifests_sha256"]["dynamic"] and first["manifests_sha256"]["static"] is None
    assert first["git_rev"] is None and first["datasets"]["dynamic"]["reader"] == params.data.dynamic.reader
    (tmp_path / "artifacts/prepared/dynamic.csv").write_text("b\n")
    assert registry.data_version(params)["id"] != first["id"]
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123.dir\n  size: 10\n  nfiles: 2\n  path: data\n")
    assert registry.data_version(params)["data_dvc"] == {"path": "data", "md5": "0123.dir", "size": 10, "nfiles": 2}
    assert registry.data_version(params, ROOT)["git_rev"]  # the repository itself is a git checkout


# ------------------------------------------------------------------------------------------ package
@pytest.fixture
def gated(home, tmp_path):
    """A project with a gated candidate (decision passed), a stub service and bentofile."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    for d in ("artifacts/finetune", "artifacts/eval", "artifacts/gate"):
        (tmp_path / d).mkdir(parents=True)
    make_checkpoint(tmp_path / "artifacts/finetune/model.pt", seed=1)
    (tmp_path / "artifacts/eval/metrics.json").write_text(json.dumps({"dynamic": {"uar": 0.7, "war": 0.8}}))
    write_decision(tmp_path, True)
    write_stub_serving(tmp_path)
    return load_params("params.yaml")


def write_decision(root: Path, passed: bool):
    d = {"passed": passed, "reasons": [] if passed else ["UAR 0.1 is below the floor 0.25"], "notes": [],
         "comparison": [], "champion": None,
         "candidate": {"sha256": sha256_file(root / "artifacts/finetune/model.pt"),
                       "metrics_sha256": sha256_file(root / "artifacts/eval/metrics.json")}}
    (root / "artifacts/gate/decision.json").write_text(json.dumps(d))


def test_package_promotes_and_builds_when_the_gate_passed(gated, tmp_path):
    result = package(gated)
    champ = registry.current_champion()
    assert result["promoted"] and result["champion"] == champ.tag and champ.source == result["candidate"]
    assert result["model_tags"] == [champ.tag] and result["bento_tag"].startswith("stub:")
    assert champ.metadata["run"]["via"] == "dvc package stage" and champ.metadata["gate"]["passed"]
    assert champ.metadata["params"]["profile"] == "tiny" and "manifests_sha256" in champ.data_version
    assert champ.metadata["metrics"]["dynamic"]["uar"] == 0.7 and "val" in champ.metadata["metrics"]
    written = json.loads((tmp_path / "artifacts/package/bento.json").read_text())
    assert written["bento_tag"] == result["bento_tag"] and written["build_seconds"] > 0
    # Running the stage again on the same candidate promotes nothing new.
    again = package(gated)
    assert again["champion"] == champ.tag and len(registry.history()) == 1


def test_package_skips_on_a_failed_gate_and_touches_nothing(gated, tmp_path):
    write_decision(tmp_path, False)
    result = package(gated)
    assert result["skipped"] and "below the floor" in result["reason"] and result["champion"] is None
    assert registry.history() == [] and registry.candidates() == []
    assert json.loads((tmp_path / "artifacts/package/bento.json").read_text())["skipped"]
    out = run_module("s4d.package", cwd=tmp_path, env={"BENTOML_HOME": os.environ["BENTOML_HOME"]})
    assert out.returncode == 0, out.stderr  # the DVC stage goes on; the champion keeps serving


def test_package_refuses_a_checkpoint_the_gate_did_not_judge(gated, tmp_path):
    (tmp_path / "artifacts/finetune/model.pt").write_bytes(b"half-written or retrained since")
    with pytest.raises(PackageError, match="changed after the gate"):
        package(gated)
    assert registry.candidates() == [] and registry.history() == []


def test_a_failed_build_undoes_the_promotion(gated, tmp_path):
    first = package(gated)
    make_checkpoint(tmp_path / "artifacts/finetune/model.pt", seed=2)
    write_decision(tmp_path, True)
    (tmp_path / "stub_service.py").write_text("raise ImportError('broken service')\n")
    with pytest.raises(PackageError, match="bentoml build failed"):
        package(gated)
    assert registry.current_champion().tag == first["champion"] and len(registry.history()) == 1
    (tmp_path / "serving/bentofile.yaml").unlink()
    with pytest.raises(PackageError, match="bentofile.yaml does not exist"):
        package(gated)
    assert len(registry.history()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "serving/bentofile.yaml").is_file(), reason="serving/bentofile.yaml not there yet")
def test_package_builds_the_serving_bento_around_the_champion(gated, tmp_path):
    result = package(gated, bentofile=ROOT / "serving/bentofile.yaml", build_ctx=ROOT)
    champ = registry.current_champion()
    assert result["promoted"] and champ.tag in result["model_tags"]
    import bentoml
    assert str(bentoml.bentos.get(result["bento_tag"]).tag) == result["bento_tag"]
