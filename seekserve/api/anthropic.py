"""Wire models of `POST /anthropic/v1/messages` (spec §11) and their translation into a
`ChatCompletionRequest`, so an Anthropic request runs through the chat pipeline unchanged.

    Anthropic                              chat
    system (string or text blocks)    →    system message
    user: text blocks                 →    user message (adjacent text blocks joined by "\\n")
    user: tool_result                 →    tool message (content string or text blocks)
    assistant: text / thinking /      →    assistant content / reasoning_content (kept out of
               tool_use                    the prompt) / tool_calls (input as JSON arguments)
    last assistant message (no calls) →    prefix completion: the reply continues it (prefill)
    tools (name, description,         →    function tools; tool_choice auto / any / tool /
           input_schema)                   none → auto / required / named / none
    max_tokens, stop_sequences,       →    max_tokens, stop, temperature, top_p, stream
    temperature, top_p, stream
    thinking enabled / adaptive /     →    the served thinking model / the thinking model if
             disabled                      one is served / a non-thinking model

Ignored, as DeepSeek ignores them: `metadata`, `top_k`, `container`, `mcp_servers`,
`service_tier`, `output_config`, `budget_tokens`, `cache_control`, `citations`, `is_error`,
`disable_parallel_tool_use`, the `anthropic-version` / `anthropic-beta` headers. Image,
document, search-result, redacted-thinking and server-tool blocks are a 400.

Every shape error is a 400 (as Anthropic answers them) in DeepSeek's envelope, its message
naming the field (`messages[0].content[1]`, `tool_choice.type`, `max_tokens`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from seekserve.api.protocol import (
    FUNCTION_NAME_RE,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    AssistantMessage,
    ChatCompletionRequest,
    FunctionCall,
    FunctionDefinition,
    Message,
    NamedFunction,
    NamedToolChoice,
    SystemMessage,
    ThinkingOptions,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
    check_values,
    deserialize_error,
    parse_json_object,
)
from seekserve.errors import InvalidRequest


class _Wire(BaseModel):
    # strict types as on /chat/completions; unknown fields (metadata, top_k, ...) are ignored
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentBlock(_Wire):
    """Any content block; which fields a type needs is checked in translation, so an
    unsupported type gets its own message rather than a union error."""

    type: str
    text: str | None = None  # text
    thinking: str | None = None  # thinking
    id: str | None = None  # tool_use
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None  # tool_result
    content: str | list[ContentBlock] | None = None


class MessageParam(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolParam(_Wire):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom" or absent; server tools are not supported


class ToolChoiceParam(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingParam(_Wire):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class MessagesRequest(_Wire):
    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: str | list[ContentBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None


_UNSUPPORTED = "content blocks of type `{type}` are not supported"


def parse_messages_request(body: bytes) -> MessagesRequest:
    """Decode and check the shape of the JSON body (400 naming the field)."""
    payload = parse_json_object(body, "MessagesRequest")
    try:
        req = MessagesRequest.model_validate(payload, strict=True)
    except ValidationError as exc:
        error = deserialize_error(exc)
        raise InvalidRequest(error.message, param=error.param) from None
    if req.max_tokens < 1:
        raise InvalidRequest(
            f"Invalid max_tokens value {req.max_tokens}, max_tokens must be at least 1",
            param="max_tokens",
        )
    _check_stop_sequences(req.stop_sequences or [])
    return req


def _check_stop_sequences(stops: list[str]) -> None:
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            f"Invalid stop_sequences value, at most {MAX_STOP_SEQUENCES} stop sequences are "
            f"allowed (got {len(stops)})",
            param="stop_sequences",
        )
    for stop in stops:
        if len(stop) > MAX_STOP_LENGTH:
            raise InvalidRequest(
                f"Invalid stop_sequences value, a stop sequence may be at most "
                f"{MAX_STOP_LENGTH} characters (got {len(stop)})",
                param="stop_sequences",
            )


def to_chat_request(req: MessagesRequest, model: str) -> ChatCompletionRequest:
    """The chat request that serves `req` on the served model named `model`, checked as
    /chat/completions checks its own (ranges, tools, tool_choice)."""
    messages: list[Message] = []
    if req.system is not None:
        messages.append(SystemMessage(role="system", content=_system_text(req.system)))
    for index, message in enumerate(req.messages):
        where = f"messages[{index}]"
        if message.role == "user":
            messages.extend(_user_messages(message.content, where))
        else:
            messages.append(_assistant_message(message.content, where))
    last = messages[-1] if messages else None
    if isinstance(last, AssistantMessage) and not last.tool_calls:
        last.prefix = True  # Anthropic's prefill: the reply continues this text
    chat = ChatCompletionRequest(
        model=model,
        messages=messages,
        max_tokens=req.max_tokens,
        stop=req.stop_sequences,
        stream=req.stream,
        temperature=req.temperature,
        top_p=req.top_p,
        tools=_tools(req.tools) if req.tools else None,
        tool_choice=_tool_choice(req.tool_choice),
        thinking=_thinking(req.thinking),
    )
    check_values(chat)
    return chat


def _system_text(system: str | list[ContentBlock]) -> str:
    if isinstance(system, str):
        return system
    texts = []
    for index, block in enumerate(system):
        if block.type != "text":
            raise InvalidRequest(
                f"Invalid system[{index}] value: system blocks must be text blocks "
                f"(got `{block.type}`)",
                param=f"system[{index}]",
            )
        texts.append(_need(block, "text", f"system[{index}]"))
    return "\n".join(texts)


def _user_messages(content: str | list[ContentBlock], where: str) -> list[Message]:
    """A user turn: its text as user messages, each tool_result as a tool message, in order."""
    if isinstance(content, str):
        return [UserMessage(role="user", content=content)]
    out: list[Message] = []
    texts: list[str] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        if block.type == "text":
            texts.append(_need(block, "text", at))
        elif block.type == "tool_result":
            if texts:
                out.append(UserMessage(role="user", content="\n".join(texts)))
                texts = []
            call_id = _need(block, "tool_use_id", at)
            text = _result_text(block.content, at)
            out.append(ToolMessage(role="tool", content=text, tool_call_id=call_id))
        else:
            raise _unsupported(block, at, "in a user message")
    if texts or not out:
        out.append(UserMessage(role="user", content="\n".join(texts)))
    return out


def _result_text(content: str | list[ContentBlock] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        if block.type != "text":
            raise _unsupported(block, at, "in a tool result")
        texts.append(_need(block, "text", at))
    return "\n".join(texts)


def _assistant_message(content: str | list[ContentBlock], where: str) -> AssistantMessage:
    if isinstance(content, str):
        return AssistantMessage(role="assistant", content=content)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        if block.type == "text":
            texts.append(_need(block, "text", at))
        elif block.type == "thinking":
            thoughts.append(_need(block, "thinking", at))
        elif block.type == "tool_use":
            arguments = json.dumps(_need(block, "input", at), ensure_ascii=False)
            function = FunctionCall(name=_need(block, "name", at), arguments=arguments)
            calls.append(ToolCall(id=_need(block, "id", at), function=function))
        else:
            raise _unsupported(block, at, "in an assistant message")
    return AssistantMessage(
        role="assistant",
        content="\n".join(texts) if texts else None,
        reasoning_content="".join(thoughts) if thoughts else None,
        tool_calls=calls or None,
    )


def _need(block: ContentBlock, field: str, where: str) -> Any:
    value = getattr(block, field)
    if value is None:
        raise InvalidRequest(
            f"Invalid {where} value: a `{block.type}` block needs the field `{field}`",
            param=f"{where}.{field}",
        )
    return value


def _unsupported(block: ContentBlock, where: str, context: str) -> InvalidRequest:
    known = block.type in {"text", "thinking", "tool_use", "tool_result"}
    reason = f"`{block.type}` blocks are not allowed {context}" if known else None
    message = reason or _UNSUPPORTED.format(type=block.type)
    return InvalidRequest(f"Invalid {where} value: {message}", param=where)


def _tools(tools: list[ToolParam]) -> list[Tool]:
    out = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if tool.type not in (None, "custom"):
            raise InvalidRequest(
                f"Invalid {where}.type value: tools of type `{tool.type}` are not supported "
                "(only client tools with an input_schema)",
                param=f"{where}.type",
            )
        if not FUNCTION_NAME_RE.fullmatch(tool.name):
            raise InvalidRequest(
                f"Invalid {where}.name value {tool.name!r}: a tool name must be 1 to 64 "
                "characters of a-z, A-Z, 0-9, underscores and dashes",
                param=f"{where}.name",
            )
        if tool.input_schema is None:
            raise InvalidRequest(
                f"Invalid {where} value: missing field `input_schema`",
                param=f"{where}.input_schema",
            )
        function = FunctionDefinition(
            name=tool.name, description=tool.description, parameters=tool.input_schema
        )
        out.append(Tool(type="function", function=function))
    return out


def _tool_choice(choice: ToolChoiceParam | None) -> str | NamedToolChoice | None:
    if choice is None:
        return None
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest(
                "Invalid tool_choice value: a tool_choice of type `tool` needs `name`",
                param="tool_choice.name",
            )
        return NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _thinking(thinking: ThinkingParam | None) -> ThinkingOptions | None:
    if thinking is None or thinking.type == "adaptive":  # adaptive: chosen with the model
        return None
    return ThinkingOptions(type=thinking.type)
