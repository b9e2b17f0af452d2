"""Tool-call markup parsers: exact events, whatever the delta boundaries."""

from __future__ import annotations

import pytest

from seekserve.output.tool_calls import (
    DEEPSEEK_V3,
    DEEPSEEK_V31,
    HERMES,
    DeepSeekParser,
    HermesParser,
    ToolCallArgs,
    ToolCallParser,
    ToolCallStart,
    ToolEvent,
    format_for_template,
    tool_call_id,
)


def parse(parser: ToolCallParser, text: str, step: int) -> list[ToolEvent]:
    """Feed `text` in pieces of `step` characters; adjacent content / argument pieces
    merged, so the result does not depend on how the text was split."""
    events: list[ToolEvent] = []
    for start in range(0, len(text), step):
        events += parser.feed(text[start : start + step])
    events += parser.finish()
    merged: list[ToolEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, str) and isinstance(last, str):
            merged[-1] = last + event
        elif isinstance(event, ToolCallArgs) and isinstance(last, ToolCallArgs):
            merged[-1] = ToolCallArgs(event.index, last.text + event.text)
        else:
            merged.append(event)
    return merged


STEPS = [1, 2, 3, 7, 10_000]

HERMES_TWO_CALLS = (
    "Let me check.\n\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "nested": [1, {"a": "}\\""}]}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "get_time", "arguments": {}}\n'
    "</tool_call>"
)


@pytest.mark.parametrize("step", STEPS)
def test_hermes_content_then_parallel_calls(step):
    assert parse(HermesParser(), HERMES_TWO_CALLS, step) == [
        "Let me check.",
        ToolCallStart(0, "get_weather"),
        ToolCallArgs(0, '{"city": "Paris", "nested": [1, {"a": "}\\""}]}'),
        ToolCallStart(1, "get_time"),
        ToolCallArgs(1, "{}"),
    ]


@pytest.mark.parametrize("step", STEPS)
def test_hermes_text_after_a_call_is_content(step):
    text = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n\nDone.'
    assert parse(HermesParser(), text, step) == [
        ToolCallStart(0, "f"),
        ToolCallArgs(0, '{"x": 1}'),
        "Done.",
    ]


@pytest.mark.parametrize("step", STEPS)
def test_hermes_plain_text_and_near_misses_stay_content(step):
    for text in ["Hello <b>world</b> <tool and <tool_cal", "a <tool_call> tag in prose", "x\n\n"]:
        assert parse(HermesParser(), text, step) == [text]


@pytest.mark.parametrize("step", STEPS)
def test_hermes_other_key_order_and_string_arguments(step):
    text = '<tool_call>\n{"arguments": {"x": 1}, "name": "g"}\n</tool_call>'
    assert parse(HermesParser(), text, step) == [ToolCallStart(0, "g"), ToolCallArgs(0, '{"x": 1}')]
    text = '<tool_call>\n{"name": "g", "arguments": "{\\"x\\": 1}"}\n</tool_call>'
    assert parse(HermesParser(), text, step) == [ToolCallStart(0, "g"), ToolCallArgs(0, '{"x": 1}')]


@pytest.mark.parametrize("step", STEPS)
def test_hermes_truncated_call(step):
    """Cut off by max_tokens: the call is reported with the arguments written so far."""
    text = '<tool_call>\n{"name": "f", "arguments": {"city": "Par'
    parser = HermesParser()
    assert parse(parser, text, step) == [ToolCallStart(0, "f"), ToolCallArgs(0, '{"city": "Par')]
    assert parser.num_calls == 1
    # cut before the name is known: the text was not a call
    assert parse(HermesParser(), '<tool_call>\n{"na', step) == ['<tool_call>\n{"na']


@pytest.mark.parametrize("step", STEPS)
def test_deepseek_v3_calls(step):
    text = (
        "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>\n'
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```"
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    )
    assert parse(DeepSeekParser(), text, step) == [
        "Sure.",
        ToolCallStart(0, "get_weather"),
        ToolCallArgs(0, '{"city": "Paris"}'),
        ToolCallStart(1, "get_time"),
        ToolCallArgs(1, "{}"),
    ]


@pytest.mark.parametrize("step", STEPS)
def test_deepseek_v31_calls(step):
    text = (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
    )
    assert parse(DeepSeekParser(), text, step) == [
        ToolCallStart(0, "get_weather"),
        ToolCallArgs(0, '{"city": "Paris"}'),
    ]


def test_formats_render_what_their_parsers_read():
    calls = [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    for fmt in (HERMES, DEEPSEEK_V3, DEEPSEEK_V31):
        events = parse(fmt.parser(), fmt.render(calls), 1)
        assert events == [
            ToolCallStart(0, "get_weather"),
            ToolCallArgs(0, '{"city": "Paris"}'),
            ToolCallStart(1, "get_time"),
            ToolCallArgs(1, "{}"),
        ], fmt.name
    assert HERMES.render(calls[:1]) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )


def test_format_detection():
    assert format_for_template("{{ '<tool_call>' }}") is HERMES
    assert format_for_template("plain {{ messages }}") is HERMES
    v3 = "'<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + name + '\\n```json\\n'"
    assert format_for_template(v3) is DEEPSEEK_V3
    assert format_for_template("'<｜tool▁call▁begin｜>' + name + '<｜tool▁sep｜>'") is DEEPSEEK_V31


def test_tool_call_ids_have_deepseeks_shape_and_differ():
    first, second = tool_call_id("req-1", 0), tool_call_id("req-1", 1)
    assert first.startswith("call_00_") and second.startswith("call_01_")
    assert len(first) == len("call_00_") + 24 and first[8:].isalnum()
    assert first == tool_call_id("req-1", 0) and first != tool_call_id("req-2", 0)
