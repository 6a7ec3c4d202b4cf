"""Configs as Python files (big_vision style): `path/to/config.py[:arg]` whose `get_config(arg)` returns a
ConfigDict; command-line overrides `--config.a.b=value` checked against the existing keys and types."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Iterable

import ml_collections

from llmimg_jax.errors import UserError

ConfigDict = ml_collections.ConfigDict


def load_config(spec: str) -> ConfigDict:
    """Loads `file.py` or `file.py:arg` by calling its `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found; pass --config configs/NAME.py[:variant]")
    module_spec = importlib.util.spec_from_file_location(f"_llmimg_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file '{path}' has no get_config(arg) function")
    try:
        config = module.get_config(arg or None)
    except (KeyError, ValueError) as e:
        raise UserError(f"config '{spec}': {e}") from e
    if not isinstance(config, ConfigDict):
        raise UserError(f"config file '{path}': get_config must return an ml_collections.ConfigDict")
    return config


def _parse_value(key: str, text: str, current: Any) -> Any:
    """Parses an override's text into the type of the field it replaces."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise UserError(f"config key '{key}' expects true or false, got '{text}'")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"config key '{key}' expects an integer, got '{text}'") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise UserError(f"config key '{key}' expects a number, got '{text}'") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)) or current is None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if current is None:
                return text
            raise UserError(f"config key '{key}' expects a Python literal like {current!r}, got '{text}'") from None
        if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
            raise UserError(f"config key '{key}' expects a sequence like {current!r}, got '{text}'")
        return type(current)(value) if isinstance(current, (tuple, list)) else value
    raise UserError(f"config key '{key}' holds a {type(current).__name__} and cannot be set from the command line")


def apply_override(config: ConfigDict, key: str, text: str) -> None:
    """Sets `config.<key>` (dotted) from its text, keeping the field's type."""
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "the top level"
            known = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none"
            raise UserError(f"unknown config key '{key}'; keys under {where}: {known}")
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ConfigDict):
        raise UserError(f"config key '{key}' is a section; set one of its keys: {', '.join(sorted(current.keys()))}")
    with node.ignore_type():
        node[parts[-1]] = _parse_value(key, text, current)


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
    """Applies `a.b=value` (or `--config.a.b=value`) overrides in order."""
    for item in overrides:
        item = item.removeprefix("--").removeprefix("config.")
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"override '{item}' has no '='; write --config.{key}=VALUE")
        apply_override(config, key, text)
    return config


def to_dict(config: ConfigDict) -> dict:
    return json.loads(config.to_json())


def save_config(config: ConfigDict, workdir: str) -> str:
    """Writes the resolved config to `workdir/config.json` (atomically) and returns the path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(to_dict(config), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _restore_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_restore_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _restore_tuples(v) for k, v in value.items()}
    return value


def load_workdir_config(workdir: str) -> ConfigDict:
    """Reads `workdir/config.json` back into a ConfigDict (JSON lists become tuples)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"'{workdir}' is not a llmimg workdir (no config.json); train one with `llmimg train`")
    with open(path) as f:
        return ConfigDict(_restore_tuples(json.load(f)))


def base_config() -> ConfigDict:
    """Sections shared by every training config; `configs/*.py` start from this."""
    from llmimg_jax.data.config import default_data_config
    from llmimg_jax.text.config import default_text_config
    from llmimg_jax.training.config import DEFAULT_SHARDING_RULES, default_mesh_config, default_train_config

    config = ConfigDict()
    config.task = ""  # 'diffusion' | 'gan' | 'lm' | 'captioner'
    config.seed = 0
    config.data = default_data_config()
    config.text = default_text_config()
    config.mesh = default_mesh_config()
    config.sharding_rules = DEFAULT_SHARDING_RULES
    config.train = default_train_config()
    return config
