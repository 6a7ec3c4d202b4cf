import json
import textwrap

import pytest

from llmimg_jax.cli.main import main
from llmimg_jax.config import apply_overrides, base_config, load_config, load_workdir_config, save_config
from llmimg_jax.errors import UserError

CONFIG = textwrap.dedent("""
    from llmimg_jax.config import base_config

    def get_config(arg=None):
        config = base_config()
        config.task = "diffusion"
        config.train.steps = 5 if arg == "tiny" else 1000
        return config
""")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG)
    return str(path)


def test_variant_and_typed_overrides(config_file):
    config = load_config(config_file + ":tiny")
    assert config.train.steps == 5
    apply_overrides(config, ["train.steps=20", "train.lr=1e-3", "data.shuffle=false", "train.compute_dtype=bfloat16",
                             "mesh.fsdp=2", "sharding_rules=(('embed', 'fsdp'),)"])
    assert config.train.steps == 20 and isinstance(config.train.steps, int)
    assert config.train.lr == 1e-3
    assert config.data.shuffle is False
    assert config.train.compute_dtype == "bfloat16"
    assert config.mesh.fsdp == 2
    assert config.sharding_rules == (("embed", "fsdp"),)
    assert load_config(config_file).train.steps == 1000


@pytest.mark.parametrize("override, words", [
    ("train.stepz=3", ["unknown config key 'train.stepz'", "steps"]),
    ("trian.steps=3", ["unknown config key 'trian.steps'", "train"]),
    ("train.steps=abc", ["'train.steps'", "integer"]),
    ("train.lr=fast", ["'train.lr'", "number"]),
    ("data.shuffle=maybe", ["'data.shuffle'", "true or false"]),
    ("train=3", ["'train' is a section"]),
    ("sharding_rules=3", ["'sharding_rules'", "sequence"]),
])
def test_bad_overrides_name_the_key(config_file, override, words):
    config = load_config(config_file)
    with pytest.raises(UserError) as e:
        apply_overrides(config, [override])
    for word in words:
        assert word in str(e.value)


def test_missing_config_file_and_missing_get_config(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="get_config"):
        load_config(str(tmp_path / "empty.py"))


def test_config_json_round_trip(tmp_path):
    config = base_config()
    config.train.steps = 7
    save_config(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["train"]["steps"] == 7
    restored = load_workdir_config(str(tmp_path))
    assert restored.sharding_rules == config.sharding_rules
    assert restored.to_dict() == config.to_dict()
    with pytest.raises(UserError, match="not a llmimg workdir"):
        load_workdir_config(str(tmp_path / "missing"))


def test_cli_reports_bad_override_in_one_line(config_file, tmp_path, capsys):
    code = main(["train", "--config", config_file + ":tiny", "--workdir", str(tmp_path / "w"),
                 "--config.train.stepz=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown config key 'train.stepz'" in err
    assert not (tmp_path / "w" / "config.json").exists()
