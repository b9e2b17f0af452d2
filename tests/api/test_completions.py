"""`POST /beta/completions` (spec §7): text_completion shape, echo, logprobs, FIM gating."""

from __future__ import annotations

import json

import pytest

from seekserve.prompt.fim import NoFimTokens, fim_prompt
from tests.api.helpers import MODEL, assert_error, assert_still_serving

URL = "/beta/completions"


def body(**fields):
    return {"model": MODEL, "prompt": "Once upon a time, ", "max_tokens": 6, "temperature": 0,
            **fields}  # fmt: skip


def test_plain_completion_shape(client):
    data = client.post(URL, json=body()).json()
    assert list(data) == ["id", "object", "created", "model", "choices", "usage",
                          "system_fingerprint"]  # fmt: skip
    assert data["object"] == "text_completion" and data["model"] == MODEL
    [choice] = data["choices"]
    assert list(choice) == ["text", "index", "logprobs", "finish_reason"]
    assert (choice["index"], choice["logprobs"], choice["finish_reason"]) == (0, None, "length")
    usage = data["usage"]
    assert usage["completion_tokens"] == 6
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == (usage["prompt_tokens"])
    )


def test_echo_prepends_the_prompt(client):
    plain = client.post(URL, json=body()).json()["choices"][0]["text"]
    echoed = client.post(URL, json=body(echo=True)).json()["choices"][0]["text"]
    assert echoed == "Once upon a time, " + plain


def test_logprobs_in_the_text_completion_shape(client):
    data = client.post(URL, json=body(logprobs=2)).json()
    logprobs = data["choices"][0]["logprobs"]
    assert list(logprobs) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 6
    for token, logprob, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert 2 <= len(top) <= 3 and top[token] == logprob  # greedy: the token is the best
        assert max(top.values()) == logprob
    assert logprobs["text_offset"][0] == 0


def test_stream_text_equals_the_json_text(client):
    expected = client.post(URL, json=body()).json()["choices"][0]["text"]
    response = client.post(URL, json=body(stream=True))
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]


def test_suffix_needs_fim_tokens(client):
    response = client.post(URL, json=body(suffix="\nThe end."))
    assert_error(
        response,
        400,
        "Invalid suffix value: model deepseek-chat has no fill-in-the-middle tokens; omit "
        "suffix for a plain completion, or serve a FIM model (e.g. qwen2.5-coder-0.5b)",
        "suffix",
    )
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"max_tokens": 4097},
            "Invalid max_tokens value, the valid range of max_tokens is [1, 4096]",
        ),  # fmt: skip
        ({"logprobs": 21}, "Invalid logprobs value, the valid range of logprobs is [0, 20]"),
        (
            {"temperature": 3},
            "Invalid temperature value, the valid range of temperature is [0, 2.0]",
        ),  # fmt: skip
    ],
)
def test_ranges(client, fields, message):
    assert_error(client.post(URL, json=body(**fields)), 400, message)


def test_prompt_is_required(client):
    response = client.post(URL, json={"model": MODEL})
    assert_error(
        response,
        422,
        "Failed to deserialize the JSON body into the target type: missing field `prompt`",
    )


class FimVocabulary:
    fim_tokens = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


class PlainVocabulary:
    fim_tokens = None


def test_fim_prompt_layout():
    assert fim_prompt(FimVocabulary(), "def f(x):\n", "\n    return y\n") == (
        "<|fim_prefix|>def f(x):\n<|fim_suffix|>\n    return y\n<|fim_middle|>"
    )
    assert fim_prompt(PlainVocabulary(), "abc", None) == "abc"
    with pytest.raises(NoFimTokens):
        fim_prompt(PlainVocabulary(), "abc", "def")
