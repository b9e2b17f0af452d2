"""The offline entry point, on the same engine the server uses.

llm = LLM("smollm2-135m")
[out] = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))
print(out.text)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from seekserve.engine.engine import Engine
from seekserve.output.processor import RequestOutputState
from seekserve.prompt.chat_template import ChatTemplate
from seekserve.prompt.tokenizer import Tokenizer
from seekserve.sampling_params import SamplingParams


@dataclass(slots=True)
class CompletionOutput:
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_pretrained_dir(path) if path.is_dir() else Tokenizer.from_gguf(path)


def resolve_model_path(name_or_path: str) -> Path:
    """A local GGUF file or HF directory, or a pulled catalogue name."""
    from seekserve.loader.sources import resolve_model

    return Path(resolve_model(name_or_path))


@dataclass
class LoadedModel:
    """Everything one served model needs: engine, tokenizer and chat template."""

    engine: Engine
    tokenizer: Tokenizer
    chat_template: ChatTemplate

    @classmethod
    def load(cls, config: EngineConfig) -> LoadedModel:
        path = resolve_model_path(config.model.model)
        tokenizer = load_tokenizer(path)
        config = EngineConfig(
            model=ModelConfig(**{**config.model.__dict__, "model": str(path)}),
            cache=config.cache,
            scheduler=config.scheduler,
            seed=config.seed,
            num_threads=config.num_threads,
        )
        engine = Engine.from_config(config, tokenizer.eos_token_ids)
        template = ChatTemplate(tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)
        return cls(engine, tokenizer, template)


class LLM:
    def __init__(self, model: str, dtype: str = "auto", seed: int = 0, **cache_and_sched: Any):
        cache_keys = {"block_size", "kv_cache_memory_bytes", "num_blocks"}
        config = EngineConfig(
            model=ModelConfig(model=model, dtype=dtype),
            cache=CacheConfig(**{k: v for k, v in cache_and_sched.items() if k in cache_keys}),
            scheduler=SchedulerConfig(
                **{k: v for k, v in cache_and_sched.items() if k not in cache_keys}
            ),
            seed=seed,
        )
        loaded = LoadedModel.load(config)
        self.engine, self.tokenizer, self.chat_template = (
            loaded.engine,
            loaded.tokenizer,
            loaded.chat_template,
        )
        self._ids = itertools.count()

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[CompletionOutput]:
        """Run all prompts together (continuous batching); outputs in prompt order."""
        params_list = (
            params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        )
        outputs: dict[str, CompletionOutput] = {}
        states: dict[str, RequestOutputState] = {}
        for prompt, p in zip(prompts, params_list, strict=True):
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            request_id = f"offline-{next(self._ids)}"
            outputs[request_id] = CompletionOutput(prompt_token_ids=ids)
            states[request_id] = RequestOutputState(self.tokenizer, p.stop)
            self.engine.add_request(request_id, ids, p)
        while self.engine.has_unfinished_requests():
            for engine_output in self.engine.step():
                out = outputs[engine_output.request_id]
                delta = states[engine_output.request_id].process(engine_output)
                out.token_ids.extend(engine_output.new_token_ids)
                out.text += delta.text
                if delta.finish_reason is not None:
                    out.finish_reason = delta.finish_reason
                    self.engine.abort_request(engine_output.request_id)  # no-op unless stopped
        return list(outputs.values())

    def chat(
        self,
        conversations: list[list[dict[str, Any]]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[CompletionOutput]:
        prompts = [self.chat_template.render(messages) for messages in conversations]
        return self.generate(prompts, params)
