"""The serve config file: several served models, each with its own engine settings.

Owns: reading a TOML file (or YAML, when PyYAML is installed) given as
`seekserve serve --config FILE` into one `EngineConfig` per served model, checking its keys and
types. Knows nothing about loading models; `api/app.py` builds an engine per config.

    # models.toml
    [[models]]
    name = "deepseek-chat"              # the name clients send (required, unique)
    model = "smollm2-135m"              # catalogue name, .gguf, HF directory, org/name[:file]
    kv_cache_memory = "512MiB"
    memory_budget = "1GiB"              # weights + KV pool must fit, else the start fails
    price_output = 0.42                 # USD per 1M tokens (also price_cache_hit / _miss)

    [[models]]
    name = "deepseek-reasoner"
    model = "models/qwen.gguf"          # relative paths: from the config file's folder
    reasoning = true
    chat_template_file = "qwen-think.jinja"
    max_num_seqs = 16

Every model key (see `MODEL_KEYS`) is optional except `name` and `model`; an omitted key takes
the value of the matching command-line flag (so `--device cuda` applies to every model), and
the flag's default when the flag is not given either.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from seekserve.config import EngineConfig, duplicate_served_name, parse_size_bytes

# key -> (section of EngineConfig or "" for its own fields, field name, value parser)
Parser = Callable[[Any, str], Any]


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'{where} must be a size such as "2GiB" or a byte count, got {value!r}')
    try:
        return parse_size_bytes(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{where} must be a price >= 0 in USD per 1M tokens, got {value!r}")
    return float(value)


MODEL_KEYS: dict[str, tuple[str, str, Parser]] = {
    "name": ("model", "served_model_name", _string),
    "model": ("model", "model", _string),
    "dtype": ("model", "dtype", _string),
    "device": ("model", "device", _string),
    "quantization": ("model", "quantization", _string),
    "max_model_len": ("model", "max_model_len", _integer),
    "reasoning": ("model", "reasoning", _boolean),
    "max_output_tokens": ("model", "max_output_tokens", _integer),
    "default_max_tokens": ("model", "default_max_tokens", _integer),
    "chat_template": ("model", "chat_template", _string),
    "chat_template_file": ("model", "chat_template", _string),  # read in `_model_config`
    "kv_cache_memory": ("cache", "kv_cache_memory_bytes", _size),
    "num_blocks": ("cache", "num_blocks", _integer),
    "block_size": ("cache", "block_size", _integer),
    "prefix_caching": ("cache", "enable_prefix_caching", _boolean),
    "disk_cache_dir": ("cache", "disk_cache_dir", _string),
    "disk_cache_size": ("cache", "disk_cache_max_bytes", _size),
    "max_num_seqs": ("scheduler", "max_num_seqs", _integer),
    "max_num_batched_tokens": ("scheduler", "max_num_batched_tokens", _integer),
    "memory_budget": ("", "memory_budget_bytes", _size),
    "price_cache_hit": ("model", "price_cache_hit", _price),
    "price_cache_miss": ("model", "price_cache_miss", _price),
    "price_output": ("model", "price_output", _price),
    "seed": ("", "seed", _integer),
    "threads": ("", "num_threads", _integer),
}
_PATH_KEYS = ("model", "chat_template_file", "disk_cache_dir")


def load_config_file(path: str | Path, base: EngineConfig) -> list[EngineConfig]:
    """One `EngineConfig` per `[[models]]` entry of the file at `path`, in file order; keys a
    model omits come from `base` (the command line). ValueError naming the file, the model and
    the key for anything wrong (duplicate served names included)."""
    path = Path(path)
    data = _read(path)
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; expected models")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: no models; add at least one [[models]] table")
    configs = [_model_config(path, i, entry, base) for i, entry in enumerate(entries, start=1)]
    if duplicate := duplicate_served_name(configs):
        name, first, second = duplicate
        raise ValueError(
            f"{path}: served model name {name!r} is given twice (models {first} and {second}); "
            "give each model its own name"
        )
    return configs


def _read(path: Path) -> dict[str, Any]:
    """The file's data: TOML, or YAML for .yaml / .yml."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the config file {path}: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"{path}: YAML config files need PyYAML (pip install pyyaml); or use TOML"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping with a 'models' list")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None


def _model_config(path: Path, index: int, entry: Any, base: EngineConfig) -> EngineConfig:
    """`base` with the entry's keys applied, validated by the config dataclasses."""
    where = f"{path}: models[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table of settings, got {entry!r}")
    unknown = sorted(set(entry) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(MODEL_KEYS)}"
        )
    for required in ("name", "model"):
        if required not in entry:
            raise ValueError(f"{where} lacks the required key {required!r}")
    if "chat_template" in entry and "chat_template_file" in entry:
        raise ValueError(f"{where}: give chat_template or chat_template_file, not both")
    where = f"{path}: model {entry['name']!r}"
    changes: dict[str, dict[str, Any]] = {"model": {}, "cache": {}, "scheduler": {}, "": {}}
    for key, raw in entry.items():
        section, field_name, parse = MODEL_KEYS[key]
        value = parse(raw, f"{where}: {key}")
        if key in _PATH_KEYS:
            try:
                value = _relative_to(path.parent, value, must_exist=key == "chat_template_file")
            except ValueError as exc:
                raise ValueError(f"{where}: {key}: {exc}") from None
        if key == "chat_template_file":
            value = Path(value).read_text()
        changes[section][field_name] = value
    try:
        return replace(
            base,
            model=replace(base.model, **changes["model"]),
            cache=replace(base.cache, **changes["cache"]),
            scheduler=replace(base.scheduler, **changes["scheduler"]),
            **changes[""],
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _relative_to(folder: Path, value: str, must_exist: bool) -> str:
    """A relative path that exists from the config file's folder, made absolute; other values
    (catalogue names, hub ids, absolute paths) unchanged. ValueError for a missing file when
    `must_exist`."""
    candidate = folder / Path(value).expanduser()
    if candidate.exists() or (must_exist and not Path(value).is_absolute()):
        if must_exist and not candidate.is_file():
            raise ValueError(f"chat template file {candidate} does not exist")
        return str(candidate)
    return value
