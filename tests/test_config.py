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
    params = load_params(ROOT / "params.yaml")
    assert params.profile == "tiny" and params.model.embed_dim <= 256
    assert params.models["base"].embed_dim == 768 and params.models["base"].moae.bottleneck == 192
    # params.yaml is the single source: it spells out every key of the schema, and nothing else.
    assert keys(yaml.safe_load((ROOT / "params.yaml").read_text())) == keys(to_dict(Params()))


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


def test_params_yaml_is_the_commented_default_dump():
    """`python -m s4d.config > params.yaml` regenerates it; the committed file holds the schema defaults,
    so code and params.yaml cannot drift apart silently."""
    from s4d.config import params_yaml

    assert load_params(ROOT / "params.yaml") == Params()
    text = (ROOT / "params.yaml").read_text()
    assert params_yaml() in text
    assert "layers: 3  # MoAE on the last `layers` blocks" in text
