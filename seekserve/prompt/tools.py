"""Tools and tool-call history in the prompt, for any chat template.

Two kinds of template:
  * one that takes `tools` (Qwen, DeepSeek, Hermes...): it gets the tool list and the
    history as Hugging Face templates expect it (assistant `tool_calls`, `role: tool`);
  * one that does not (SmolLM2...): the tools are described in a system prompt of ours, past
    calls are written back as the markup the model is asked to produce, and tool results
    become user turns in `<tool_response>` tags — so such a template (which may fail on
    `content: null` or reject a `tool` role) only ever sees user/assistant/system text.

Messages come in as plain dicts: role, content (str), and `tool_calls` ({id, type,
function: {name, arguments (JSON text)}}) / `tool_call_id` where the wire had them.
"""

from __future__ import annotations

import json
from typing import Any

from seekserve.output.tool_calls import ToolCallFormat
from seekserve.prompt.chat_template import ChatTemplate


def render_chat(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    fmt: ToolCallFormat,
) -> str:
    """The prompt text, ending in the generation prompt."""
    if template.takes_tools:
        prepared = [_for_tool_template(m, fmt) for m in messages]
        extra = {"tools": tools} if tools else {}
        return template.render(prepared, add_generation_prompt=True, **extra)
    prepared = _for_plain_template(messages, fmt)
    if tools:
        prepared = _with_system_text(prepared, tool_system_prompt(tools, fmt))
    return template.render(prepared, add_generation_prompt=True)


def tool_system_prompt(tools: list[dict[str, Any]], fmt: ToolCallFormat) -> str:
    """Our description of the tools and of the call markup, for templates without tools."""
    signatures = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    example = fmt.render([("<function name>", "<arguments as a JSON object>")])
    return (
        "You can call functions to help you answer. Their signatures, in JSON Schema:\n"
        f"<tools>\n{signatures}\n</tools>\n\n"
        "To call a function, write the call in exactly this form (one block per call; "
        "several calls are allowed):\n"
        f"{example}\n"
        "The function results will come back in <tool_response></tool_response> tags. "
        "If no function is needed, answer directly."
    )


def _for_tool_template(message: dict[str, Any], fmt: ToolCallFormat) -> dict[str, Any]:
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call["function"])
        if fmt.name == "hermes":  # these templates write `arguments | tojson`: a mapping
            function["arguments"] = _json_or_text(function["arguments"])
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


def _for_plain_template(
    messages: list[dict[str, Any]], fmt: ToolCallFormat
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            markup = fmt.render(
                [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            )
            out.append({"role": "assistant", "content": f"{content}\n{markup}".lstrip("\n")})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("_tool_results"):  # consecutive results: one user turn
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        else:
            out.append({"role": role, "content": content})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
