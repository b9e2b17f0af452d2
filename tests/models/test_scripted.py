"""The scripted test model forces its replies exactly, through the real engine: batching,
chunked prefill, prefix cache, preemption, sampling; and over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekserve.engine.engine import Engine
from seekserve.prompt.chat_template import ChatTemplate
from seekserve.prompt.tokenizer import Tokenizer
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config
from tests.scripted import build_scripted_model, encode_pieces

SCRIPTS = {
    "alpha please": ["<tool", "_call>\n{", '"name": "get_weather"}', "\n</tool_call>"],
    "beta please": ["<think>", "\nhmm", "</think>", "\n\n", "Hello", " world", "!"],
}
GREEDY = SamplingParams(max_tokens=64, temperature=0.0)


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    return build_scripted_model(tmp_path_factory.mktemp("scripted"), tokenizer, SCRIPTS)


@pytest.fixture(scope="module")
def eos(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id("<|im_end|>")


@pytest.fixture(scope="module")
def replies(tokenizer: Tokenizer) -> dict[str, list[int]]:
    return {key: encode_pieces(tokenizer, pieces) for key, pieces in SCRIPTS.items()}


@pytest.fixture(scope="module")
def prompt_of(tokenizer: Tokenizer):
    """prompt_of(*user messages) → the chat prompt ids (assistant turns answer "ok")."""
    template = ChatTemplate(tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)

    def render(*users: str) -> list[int]:
        messages = []
        for text in users:
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
        return tokenizer.encode(template.render(messages[:-1]))

    return render


def make_engine(model_dir: Path, tokenizer: Tokenizer, **kwargs) -> Engine:
    return Engine.from_config(engine_config(model_dir, **kwargs), tokenizer.eos_token_ids)


def run(engine: Engine, tokens: dict[str, list[int]] | None = None) -> tuple[dict, dict]:
    """Step to completion; (request id → token ids, request id → finish reason)."""
    tokens = {} if tokens is None else tokens
    reasons: dict[str, str] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
            if output.finish_reason:
                reasons[output.request_id] = output.finish_reason
    return tokens, reasons


def test_helper_writes_the_scripts_as_ids(model_dir, tokenizer, replies):
    # the pieces set the token boundaries: "<tool" and "_call>\n{" are separate tokens here
    assert replies["alpha please"][:2] == tokenizer.encode("<tool")
    assert tokenizer.decode(replies["alpha please"]) == "".join(SCRIPTS["alpha please"])
    assert replies["beta please"][:3] == tokenizer.encode("<think>")  # "<", "think", ">"
    assert encode_pieces(tokenizer, ["a", 7, "<|im_end|>"]) == tokenizer.encode("a") + [7, 2]


def test_helper_rejects_a_key_the_prompt_tokenizes_differently(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="does not contain"):
        build_scripted_model(tmp_path, tokenizer, {"<|im_start|>user": ["x"]}, "{{ 'x' }}")


def test_keys_pick_replies_in_a_staggered_batch(model_dir, tokenizer, eos, replies, prompt_of):
    engine = make_engine(model_dir, tokenizer, max_num_batched_tokens=16)
    engine.add_request("a", prompt_of("alpha please"), GREEDY)
    tokens: dict[str, list[int]] = {}
    for _ in range(3):  # "a" is mid-prefill when the others arrive
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    engine.add_request("b", prompt_of("beta please"), GREEDY)
    engine.add_request("latest-key-wins", prompt_of("alpha please", "beta please"), GREEDY)
    engine.add_request("no-key", prompt_of("gamma"), GREEDY)
    tokens, reasons = run(engine, tokens)
    assert tokens == {
        "a": replies["alpha please"] + [eos],
        "b": replies["beta please"] + [eos],
        "latest-key-wins": replies["beta please"] + [eos],
        "no-key": [eos],
    }
    assert reasons == dict.fromkeys(tokens, "stop")


def test_chunked_prefill_and_prefix_cache_hits_give_the_script(
    model_dir, tokenizer, eos, replies, prompt_of
):
    engine = make_engine(model_dir, tokenizer, max_num_batched_tokens=8)
    prompt = prompt_of("beta please")  # 32 tokens: four chunks of 8
    engine.add_request("first", prompt, GREEDY)
    assert run(engine)[0] == {"first": replies["beta please"] + [eos]}
    engine.add_request("second", prompt, GREEDY)
    cached = []
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
            cached.append(output.num_cached_tokens)
    assert tokens == {"second": replies["beta please"] + [eos]}
    assert cached[0] == (len(prompt) - 1) // 4 * 4  # every full block but the last token's


def test_preempted_requests_resume_the_script(model_dir, tokenizer, eos, replies, prompt_of):
    # 24 blocks of 4 tokens, no sharing: six ~45-token requests cannot all grow at once
    engine = make_engine(
        model_dir, tokenizer, num_blocks=24, max_num_batched_tokens=64, enable_prefix_caching=False
    )
    keys = ["alpha please", "beta please"] * 3
    for index, key in enumerate(keys):
        engine.add_request(str(index), prompt_of(key), GREEDY)
    preempted_mid_reply: set[str] = set()  # recomputed with some of their reply
    original_schedule = engine.scheduler.schedule

    def schedule_and_record():
        out = original_schedule()
        requests = engine.scheduler.requests
        preempted_mid_reply.update(
            rid for rid in out.preempted_request_ids if requests[rid].output_token_ids
        )
        return out

    engine.scheduler.schedule = schedule_and_record
    tokens, reasons = run(engine)
    assert preempted_mid_reply, "the pool was meant to force a preemption"
    assert tokens == {str(i): replies[key] + [eos] for i, key in enumerate(keys)}
    assert set(reasons.values()) == {"stop"}


def test_max_tokens_and_ignore_eos_end_with_length(model_dir, tokenizer, eos, replies, prompt_of):
    engine = make_engine(model_dir, tokenizer)
    reply = replies["beta please"]
    engine.add_request("short", prompt_of("beta please"), SamplingParams(3, temperature=0.0))
    long = SamplingParams(max_tokens=len(reply) + 3, temperature=0.0, ignore_eos=True)
    engine.add_request("ignore-eos", prompt_of("beta please"), long)
    tokens, reasons = run(engine)
    assert tokens == {"short": reply[:3], "ignore-eos": reply + [eos] * 3}
    assert reasons == {"short": "length", "ignore-eos": "length"}


def test_temperature_sampling_gives_the_script_with_logprob_zero(
    model_dir, tokenizer, eos, replies, prompt_of
):
    engine = make_engine(model_dir, tokenizer)
    params = SamplingParams(max_tokens=64, temperature=1.0, top_p=0.9, logprobs=2)
    engine.add_request("t", prompt_of("alpha please"), params)
    logprobs = []
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.extend(output.new_token_ids)
            logprobs.extend(output.logprobs or [])
    assert tokens == replies["alpha please"] + [eos]
    assert [lp.token_id for lp in logprobs] == tokens
    assert {lp.logprob for lp in logprobs} == {0.0}


def test_http_chat_answers_with_the_joined_reply(model_dir):
    from fastapi.testclient import TestClient

    from seekserve.api.app import create_app
    from seekserve.config import ServerConfig

    body = {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "beta please"}],
        "temperature": 0,
    }
    app = create_app(ServerConfig(), [engine_config(model_dir, num_blocks=256)])
    with TestClient(app) as client:
        response = client.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "".join(SCRIPTS["beta please"])
    assert choice["finish_reason"] == "stop"
