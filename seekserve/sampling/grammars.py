"""Structural-tag grammars (xgrammar): tool calls in a model's own markup, and JSON after a
thinking model's think block.

    tool_choice "required"   one or more calls of any function, nothing else
    tool_choice {function}   exactly one call of that function
    strict (beta), "auto"    free text, but a call, once begun, follows its schema

Each call is a tag `begin + arguments + end` where begin and end come from the model's
`ToolCallFormat` and the arguments follow the function's JSON Schema. For a thinking model
the think block comes first, free.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from seekserve.output.reasoning import THINK_CLOSE, THINK_OPEN
from seekserve.output.tool_calls import ToolCallFormat

Mode = Literal["required", "named", "auto"]

# Arguments may be spaced as models write them, not padded without end.
_MAX_WHITESPACE = 1
_NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


Think = Literal["none", "open", "opened"]
"""The think block before the constrained part: none; the model opens it ("<think>"); the
prompt opened it (the output starts inside)."""


def _think_then(think: Think, fmt: dict[str, Any]) -> dict[str, Any]:
    if think == "none":
        return fmt
    thinking = {
        "type": "tag",
        "begin": THINK_OPEN if think == "open" else "",
        "content": {"type": "any_text"},
        "end": THINK_CLOSE + "\n\n",
    }
    return {"type": "sequence", "elements": [thinking, fmt]}


def _structural_tag(fmt: dict[str, Any]) -> str:
    return json.dumps({"type": "structural_tag", "format": fmt}, ensure_ascii=False)


def json_object_grammar(think: Think) -> str:
    """One JSON object, after the think block."""
    obj = {
        "type": "json_schema",
        "json_schema": {"type": "object"},
        "max_whitespace_cnt": _MAX_WHITESPACE,
    }
    return _structural_tag(_think_then(think, obj))


def tool_call_grammar(
    fmt: ToolCallFormat,
    functions: list[tuple[str, dict[str, Any] | None]],
    mode: Mode,
    think: Think = "none",
) -> str:
    """The structural tag (JSON text) for (name, parameters schema) functions."""
    tags = [
        {
            "type": "tag",
            "begin": f"{fmt.begin_prefix}{name}{fmt.name_suffix}",
            "content": {
                "type": "json_schema",
                "json_schema": _NO_PARAMETERS if schema is None else schema,
                "max_whitespace_cnt": _MAX_WHITESPACE,
            },
            "end": fmt.end,
        }
        for name, schema in functions
    ]
    calls: dict[str, Any]
    if mode == "auto":
        trigger = fmt.outer[0] or fmt.begin_prefix.split("\n", 1)[0]
        if fmt.outer[0]:  # the run's opening token starts every call: one call per run
            for tag in tags:
                tag["begin"] = fmt.outer[0] + tag["begin"]
                tag["end"] = tag["end"] + fmt.outer[1]
        calls = {"type": "triggered_tags", "triggers": [trigger], "tags": tags}
    else:
        calls = {
            "type": "tags_with_separator",
            "tags": tags,
            "separator": fmt.separator,
            "at_least_one": True,
            "stop_after_first": mode == "named",
        }
        if fmt.outer[0]:
            calls = {
                "type": "sequence",
                "elements": [
                    {"type": "const_string", "value": fmt.outer[0]},
                    calls,
                    {"type": "const_string", "value": fmt.outer[1]},
                ],
            }
    return _structural_tag(_think_then(think, calls))
