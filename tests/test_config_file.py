"""The serve config file: several models at once, each with its engine, and the start-up
errors (duplicate names, over-budget models, bad keys) with their exact messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekserve.api.app import create_app
from seekserve.cli import _engine_configs, build_parser
from seekserve.config import CacheConfig, EngineConfig, ModelConfig, ServerConfig
from seekserve.config_file import load_config_file
from seekserve.loader.model_loader import load_model
from seekserve.prompt.tokenizer import Tokenizer
from seekserve.runner.model_runner import kv_bytes_per_block

BASE = EngineConfig(model=ModelConfig(model="unused"), cache=CacheConfig(block_size=4))
PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def write(tmp_path: Path, text: str, name: str = "models.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def two_models_toml(model_dir: Path) -> str:
    return f"""
[[models]]
name = "deepseek-chat"
model = "{model_dir}"
dtype = "float32"
num_blocks = 64
max_num_seqs = 4
max_num_batched_tokens = 64

[[models]]
name = "tiny-plain"
model = "{model_dir}"
dtype = "float32"
num_blocks = 32
max_model_len = 96
chat_template = "{PLAIN_TEMPLATE}"
reasoning = false
"""


def test_two_models_parse_with_their_settings(tmp_path: Path, tiny_chat_model_dir: Path) -> None:
    first, second = load_config_file(write(tmp_path, two_models_toml(tiny_chat_model_dir)), BASE)
    assert (first.model.served_model_name, second.model.served_model_name) == (
        "deepseek-chat",
        "tiny-plain",
    )
    assert (first.cache.num_blocks, second.cache.num_blocks) == (64, 32)
    assert (first.scheduler.max_num_seqs, second.scheduler.max_num_seqs) == (4, 64)
    assert (first.model.chat_template, second.model.chat_template) == (None, PLAIN_TEMPLATE)
    assert (first.model.max_model_len, second.model.max_model_len) == (None, 96)
    assert second.model.reasoning is False
    assert first.cache.block_size == 4  # from the base (the command line)


def test_two_models_serve_side_by_side(tmp_path: Path, tiny_chat_model_dir: Path) -> None:
    configs = load_config_file(write(tmp_path, two_models_toml(tiny_chat_model_dir)), BASE)
    message = {"role": "user", "content": "Hi there"}
    plain_prompt_tokens = len(Tokenizer.from_pretrained_dir(tiny_chat_model_dir).encode("Hi there"))
    with TestClient(create_app(ServerConfig(), configs)) as client:
        listed = client.get("/models").json()
        assert listed == {
            "object": "list",
            "data": [
                {"id": "deepseek-chat", "object": "model", "owned_by": "deepseek"},
                {"id": "tiny-plain", "object": "model", "owned_by": "deepseek"},
            ],
        }
        usage = {}
        for name in ("deepseek-chat", "tiny-plain"):
            body = {"model": name, "messages": [message], "temperature": 0, "max_tokens": 3}
            response = client.post("/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == name
            usage[name] = response.json()["usage"]
        # the override reached the template: the plain one renders the bare content
        assert usage["tiny-plain"]["prompt_tokens"] == plain_prompt_tokens
        assert usage["deepseek-chat"]["prompt_tokens"] > plain_prompt_tokens


def test_duplicate_served_names_in_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[models]]\nname = "a"\nmodel = "x"\n\n[[models]]\nname = "b"\nmodel = "y"\n\n'
        '[[models]]\nname = "a"\nmodel = "z"\n',
    )
    with pytest.raises(ValueError) as info:
        load_config_file(path, BASE)
    assert str(info.value) == (
        f"{path}: served model name 'a' is given twice (models 1 and 3); "
        "give each model its own name"
    )


def test_duplicate_served_names_in_create_app() -> None:
    configs = [EngineConfig(model=ModelConfig(model=m, served_model_name="x")) for m in "ab"]
    with pytest.raises(ValueError) as info:
        create_app(ServerConfig(), configs)
    assert str(info.value) == (
        "served model name 'x' is given twice (models 1 and 2: a and b); "
        "give each model its own name"
    )


def test_model_over_its_memory_budget_fails_the_start(
    tmp_path: Path, tiny_chat_model_dir: Path
) -> None:
    path = write(
        tmp_path,
        f'[[models]]\nname = "deepseek-chat"\nmodel = "{tiny_chat_model_dir}"\n'
        'dtype = "float32"\nnum_blocks = 256\nmemory_budget = "8MiB"\n',
    )
    [config] = load_config_file(path, BASE)
    assert config.memory_budget_bytes == 8 << 20
    model, arch = load_model(tiny_chat_model_dir, __import__("torch").float32, "cpu")
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    weights = sum(t.numel() * t.element_size() for t in tensors.values())
    kv = 256 * kv_bytes_per_block(arch, 4, __import__("torch").float32)
    with pytest.raises(ValueError) as info, TestClient(create_app(ServerConfig(), [config])):
        pass
    assert str(info.value) == (
        f"model 'deepseek-chat' ({tiny_chat_model_dir}) does not fit its memory budget: "
        f"weights {weights} bytes ({weights / 2**20:.1f} MiB) + KV cache {kv} bytes "
        f"({kv / 2**20:.1f} MiB) = {weights + kv} bytes > budget 8388608 bytes (8.0 MiB); "
        "raise memory_budget, or lower kv_cache_memory (or use a smaller dtype / quantization)"
    )


def test_model_within_its_budget_starts(tmp_path: Path, tiny_chat_model_dir: Path) -> None:
    path = write(
        tmp_path,
        f'[[models]]\nname = "deepseek-chat"\nmodel = "{tiny_chat_model_dir}"\n'
        'dtype = "float32"\nnum_blocks = 16\nmemory_budget = "1GiB"\n',
    )
    with TestClient(create_app(ServerConfig(), load_config_file(path, BASE))) as client:
        assert client.get("/models").status_code == 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no models; add at least one [[models]] table"),
        ("[server]\nport = 1\n", "unknown top-level key(s) server; expected models"),
        ('[[models]]\nname = "a"\n', "models[1] lacks the required key 'model'"),
        (
            '[[models]]\nname = "a"\nmodel = "x"\ngpu = true\n',
            "models[1]: unknown key(s) gpu; known keys: name, model, dtype",
        ),
        (
            '[[models]]\nname = "a"\nmodel = "x"\nmax_num_seqs = "8"\n',
            "model 'a': max_num_seqs must be an integer, got '8'",
        ),
        (
            '[[models]]\nname = "a"\nmodel = "x"\nkv_cache_memory = "lots"\n',
            "model 'a': kv_cache_memory: invalid size 'lots'; use a number with an optional "
            "unit, e.g. 2GiB",
        ),
        (
            '[[models]]\nname = "a"\nmodel = "x"\nmax_num_seqs = 0\n',
            "model 'a': max_num_seqs (0) must be >= 1",
        ),
        (
            '[[models]]\nname = "a"\nmodel = "x"\nchat_template_file = "none.jinja"\n',
            "chat template file {folder}/none.jinja does not exist",
        ),
        ("[[models]\n", "is not valid TOML"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_config_file(path, BASE)
    assert message.format(folder=tmp_path) in str(info.value)
    assert str(path) in str(info.value)


def test_template_file_and_relative_model_path(tmp_path: Path) -> None:
    (tmp_path / "plain.jinja").write_text(PLAIN_TEMPLATE)
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    path = write(
        tmp_path,
        '[[models]]\nname = "a"\nmodel = "weights.gguf"\nchat_template_file = "plain.jinja"\n'
        '[[models]]\nname = "b"\nmodel = "smollm2-135m"\n',
    )
    first, second = load_config_file(path, BASE)
    assert first.model.model == str(tmp_path / "weights.gguf")
    assert first.model.chat_template == PLAIN_TEMPLATE
    assert second.model.model == "smollm2-135m"  # a catalogue name stays a name


def test_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n  - name: deepseek-reasoner\n    model: x\n    reasoning: true\n"
        "    kv_cache_memory: 64MiB\n",
        name="models.yaml",
    )
    [config] = load_config_file(path, BASE)
    assert config.model.is_reasoning and config.cache.kv_cache_memory_bytes == 64 << 20


# ---- the command line --------------------------------------------------------------------


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_cli_flags_are_the_file_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[[models]]\nname = "a"\nmodel = "x"\nmax_num_seqs = 2\n')
    [config] = _engine_configs(serve_args("--config", str(path), "--device", "cuda:1"))
    assert (config.model.device, config.scheduler.max_num_seqs) == ("cuda:1", 2)


def test_cli_model_and_config_conflict(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--model and --served-model-name cannot be combined"):
        _engine_configs(serve_args("--config", "f.toml", "--model", "x"))


def test_cli_without_config_serves_one_model() -> None:
    [config] = _engine_configs(serve_args("--memory-budget", "2GiB", "--chat-template", "{{ x }}"))
    assert (config.model.model, config.model.served_model_name) == ("smollm2-135m", "deepseek-chat")
    assert (config.memory_budget_bytes, config.model.chat_template) == (2 << 30, "{{ x }}")
    with pytest.raises(ValueError, match="neither a file nor Jinja template text"):
        _engine_configs(serve_args("--chat-template", "missing.jinja"))


def test_serve_help_documents_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    assert "config file (--config FILE, TOML" in out and 'name = "deepseek-reasoner"' in out


def test_models_command_lists_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from seekserve.cli import main

    monkeypatch.setenv("SEEKSERVE_HOME", str(tmp_path))
    assert main(["models"]) == 0
    assert capsys.readouterr().out == (
        f"no models in {tmp_path}; run `seekserve pull smollm2-135m`\n"
    )
    entry = __import__("seekserve.loader.sources", fromlist=["CATALOGUE"]).CATALOGUE["smollm2-135m"]
    file = tmp_path / "models" / "smollm2-135m" / entry.filename
    file.parent.mkdir(parents=True)
    with file.open("wb") as handle:
        handle.truncate(entry.size_bytes)
    file.with_name(file.name + ".sha256-ok").write_text(entry.sha256 + "\n")
    assert main(["models"]) == 0
    assert capsys.readouterr().out == f"smollm2-135m                 93.8 MiB  {file}\n"


def test_unsupported_architecture_fails_the_start(
    tmp_path: Path, tiny_chat_model_dir: Path
) -> None:
    import json
    import shutil

    model_dir = Path(shutil.copytree(tiny_chat_model_dir, tmp_path / "mamba"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    engine_config = EngineConfig(model=ModelConfig(model=str(model_dir), dtype="float32"))
    with pytest.raises(ValueError) as info, TestClient(create_app(ServerConfig(), [engine_config])):
        pass
    # the list grows as architectures are added
    assert str(info.value).startswith(f"{model_dir}: unsupported architecture 'mamba'; supported: ")
    assert "llama, " in str(info.value)


def test_prices_per_model(tmp_path):
    from seekserve.config import EngineConfig, ModelConfig
    from seekserve.config_file import load_config_file

    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nname = "deepseek-chat"\nmodel = "smollm2-135m"\n'
        "price_cache_hit = 0.01\nprice_cache_miss = 0.1\nprice_output = 0.5\n"
        '[[models]]\nname = "other"\nmodel = "smollm2-135m"\n'
    )
    first, second = load_config_file(path, EngineConfig(model=ModelConfig(model="x")))
    assert (first.model.prices.cache_hit, first.model.prices.output) == (0.01, 0.5)
    assert second.model.prices == ModelConfig(model="x").prices  # V3.2's defaults
    path.write_text('[[models]]\nname = "a"\nmodel = "m"\nprice_output = -1\n')
    import pytest

    with pytest.raises(ValueError, match="price_output must be a price >= 0"):
        load_config_file(path, EngineConfig(model=ModelConfig(model="x")))
