from pathlib import Path

import pytest
import yaml

from s4d.config import ConfigError, Params, load_params, to_dict

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def keys(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]}
    return set().union(*(keys(v, f"{prefix}{k}.") for k, v in tree.items())) if tree else set()


def test_repository_params_load_and_list_every_hyperparameter():
    """params.yaml is the user's file: it must load and spell out every key of the schema (base through its
    `<<: *tiny` merge), and nothing else. Its values are the user's: this test does not pin them."""
    load_params(ROOT / "params.yaml")
    assert keys(yaml.safe_load((ROOT / "params.yaml").read_text())) == keys(to_dict(Params()))


def test_base_is_written_as_its_differences_from_tiny():
    text = (ROOT / "params.yaml").read_text()
    raw = yaml.safe_load(text.replace("<<: *tiny_moae", "").replace("<<: *tiny", ""))  # only what base sets
    params = load_params(ROOT / "params.yaml")
    tiny, base = to_dict(params.models["tiny"]), to_dict(params.models["base"])
    written = raw["models"]["base"]
    assert set(written) < set(tiny) and set(written["moae"]) < set(tiny["moae"])  # base sets only some keys
    for key in tiny:
        if key == "moae":
            for sub in tiny["moae"]:
                assert base["moae"][sub] == written["moae"].get(sub, tiny["moae"][sub]), f"models.base.moae.{sub}"
        else:
            assert base[key] == written.get(key, tiny[key]), f"models.base.{key}"


def test_editing_a_value_in_params_yaml_is_what_the_stages_get(tmp_path):
    """A user edits params.yaml in an editor: the values change, tiny's edit reaches base where base does not
    set the key, and the file still loads."""
    text = (ROOT / "params.yaml").read_text()
    params = load_params(ROOT / "params.yaml")
    edits = [(f"  epochs: {params.finetune.epochs}  # an epoch", "  epochs: 3  # an epoch"),
             (f"    mlp_ratio: {params.models['tiny'].mlp_ratio}\n", "    mlp_ratio: 2.0\n"),
             (f"  seed: {params.synthetic.seed}  # every sample", "  seed: 7  # every sample")]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    edited = load_params(write(tmp_path, text))
    assert edited.finetune.epochs == 3 and edited.pretrain.epochs == params.pretrain.epochs
    assert edited.models["tiny"].mlp_ratio == 2.0 and edited.synthetic.seed == 7
    if "mlp_ratio" not in yaml.safe_load(text.replace("<<: *tiny_moae", "").replace("<<: *tiny", ""))["models"]["base"]:
        assert edited.models["base"].mlp_ratio == 2.0


def test_overrides_apply(tmp_path):
    params = load_params(write(tmp_path, "profile: base\n"), ["finetune.epochs=3", "models.base.moae.top_k=1"])
    assert params.finetune.epochs == 3 and params.model.moae.top_k == 1 and params.model.embed_dim == 768


@pytest.mark.parametrize("text, overrides, message", [
    ("finetune:\n  epoch: 3\n", [], r"finetune\.epoch.*not in"),
    ("models:\n  tiny:\n    moae:\n      topk: 2\n", [], r"models\.tiny\.moae\.topk"),
    ("pretrain:\n  batch_size: many\n", [], r"pretrain\.batch_size.*many"),
    ("finetune:\n  label_smoothing: 0.9\n", [], r"finetune\.label_smoothing: 0\.9 is outside"),
    ("models:\n  tiny:\n    moae:\n      top_k: 0\n", [], r"models\.tiny\.moae\.top_k: 0 is outside"),
    ("evaluate:\n  crops: 2\n", [], None),
    ("finetune:\n  select_metric: loss\n", [], r"finetune\.select_metric: 'loss' is not one of uar, war"),
    ("profile: huge\n", [], r"profile: 'huge' is not a key of models"),
    ("models:\n  tiny:\n    img_size: 60\n", [], r"models\.tiny\.img_size: 60 is not a multiple of patch_size 8"),
    ("profile: tiny\n", ["finetune.nope=1"], r"finetune\.nope"),
    ("synthetic:\n  clip_per_identity: 6\n", [], r"synthetic\.clip_per_identity"),
    ("synthetic:\n  jpeg_quality_min: 0\n", [], r"synthetic\.jpeg_quality_min: 0 is outside"),
    ("synthetic:\n  val_fraction: 0.5\n  test_fraction: 0.5\n", [], r"synthetic\.val_fraction \+ synthetic\.test"),
])
def test_bad_params_name_the_key(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    if message is None:
        load_params(path, overrides)
        return
    with pytest.raises(ConfigError, match=message):
        load_params(path, overrides)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_generate_rejects_a_bad_synthetic_section_by_name(tmp_path):
    """`s4d generate` (the generate stage) checks params.yaml with the same schema: exit 2, one line, no traceback."""
    from conftest import run_module

    path = write(tmp_path, "synthetic:\n  video_identities: 0\n")
    out = run_module("s4d.data.synthetic", "--params", str(path), "--root", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "synthetic.video_identities: 0 is outside the allowed range" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()
