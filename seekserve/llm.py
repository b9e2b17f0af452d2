"""The offline entry point, on the same engine the server uses.

llm = LLM("smollm2-135m")
[out] = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))
print(out.text)
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seekserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from seekserve.engine.engine import Engine
from seekserve.output.processor import RequestOutputState
from seekserve.prompt.chat_template import ChatTemplate
from seekserve.prompt.tokenizer import Tokenizer
from seekserve.sampling.constraints import GrammarFactory
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
class ModelFiles:
    """A served model's resolved files: engine config (local path), tokenizer, template.

    Building the engine is a separate call so that it can run on the thread that will step
    it: torch's OpenMP pool belongs to the thread that first runs parallel work, and a
    second pool on another thread makes every small op of the step pay for oversubscription.
    """

    config: EngineConfig
    tokenizer: Tokenizer
    chat_template: ChatTemplate

    @classmethod
    def resolve(cls, config: EngineConfig) -> ModelFiles:
        from seekserve.loader.model_loader import check_model_files

        path = resolve_model_path(config.model.model)
        check_model_files(path)  # unsupported architecture / tensor type: fail before loading
        tokenizer = load_tokenizer(path)
        source = config.model.chat_template or tokenizer.chat_template  # override first
        template = ChatTemplate(source, tokenizer.bos_token, tokenizer.eos_token)
        config = replace(config, model=replace(config.model, model=str(path)))
        return cls(config, tokenizer, template)

    def build_engine(self) -> Engine:
        """Load the weights and allocate the KV cache (call on the stepping thread)."""
        return Engine.from_config(self.config, self.tokenizer.eos_token_ids, self.grammars)

    @functools.cached_property
    def grammars(self) -> GrammarFactory:
        """Grammar compiler over this model's tokenizer (JSON mode, tool calls), shared by
        the engine and the API (which compiles a request's grammar before queueing it)."""
        from transformers import PreTrainedTokenizerFast

        hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=self.tokenizer.backend)
        return GrammarFactory(
            hf_tokenizer, self.tokenizer.vocab_size, sorted(self.tokenizer.eos_token_ids)
        )


class LLM:
    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        seed: int = 0,
        quantization: str | None = None,
        **cache_and_sched: Any,
    ):
        cache_keys = {"block_size", "kv_cache_memory_bytes", "num_blocks"}
        config = EngineConfig(
            model=ModelConfig(model=model, dtype=dtype, quantization=quantization),
            cache=CacheConfig(**{k: v for k, v in cache_and_sched.items() if k in cache_keys}),
            scheduler=SchedulerConfig(
                **{k: v for k, v in cache_and_sched.items() if k not in cache_keys}
            ),
            seed=seed,
        )
        files = ModelFiles.resolve(config)
        self.tokenizer, self.chat_template = files.tokenizer, files.chat_template
        self.engine = files.build_engine()
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
