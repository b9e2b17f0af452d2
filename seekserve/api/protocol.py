"""Wire models of `POST /chat/completions` (spec §2) and their conversion for the engine.

Validation happens in three passes, each with DeepSeek's status and wording (spec §13):
  1. shape and types (pydantic, strict) → "Failed to deserialize the JSON body into the target
     type: <path>: <reason>"; 400 under `messages` / `tools` (as observed), else 422;
  2. values and ranges → 400 "Invalid <field> value, ...";
  3. rules of the endpoint (beta) and the model kind (reasoner) → DeepSeek's 400 texts.

Parameter precedence when building SamplingParams: request value → server default → API
default (temperature 1, top_p 1, penalties 0, max_tokens 4096 capped by the context).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seekserve.errors import ApiError, InvalidParameters, InvalidRequest

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 1024  # held-back text is bounded by the longest stop string
MAX_TOOLS = 128
MAX_TOP_LOGPROBS = 20
FUNCTION_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class _Wire(BaseModel):
    # strict: "1.3" is not a number and 1.0 is not an integer, as with DeepSeek's serde;
    # unknown fields (seed, user, ...) are ignored.
    model_config = ConfigDict(strict=True, extra="ignore")


_RequestT = TypeVar("_RequestT", bound=_Wire)


class FunctionCall(_Wire):
    name: str
    arguments: str


class ToolCall(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Wire):
    role: Literal["system"]
    content: str
    name: str | None = None


class UserMessage(_Wire):
    role: Literal["user"]
    content: str
    name: str | None = None


class AssistantMessage(_Wire):
    role: Literal["assistant"]
    content: str | None = None
    name: str | None = None
    prefix: bool | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Wire):
    role: Literal["tool"]
    content: str
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDefinition(_Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]


class StreamOptions(_Wire):
    include_usage: bool | None = None


class ThinkingOptions(_Wire):
    type: Literal["enabled", "disabled"]


class GenerationRequest(_Wire):
    """The fields chat and FIM completions share."""

    model: str
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    # extensions beyond DeepSeek's contract, as vLLM and llama.cpp's server accept them
    ignore_eos: bool | None = None
    # a further prefix-cache scope inside the key's (vLLM's name): equal salts share
    cache_salt: str | None = None

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(GenerationRequest):
    messages: list[Message]
    # OpenAI's newer name for max_tokens (LangChain and the SDKs send it); not DeepSeek's,
    # accepted as vLLM accepts it: max_tokens wins when both are given
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    thinking: ThinkingOptions | None = None

    @property
    def strict_tools(self) -> bool:
        return any(tool.function.strict for tool in self.tools or [])

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """DeepSeek's default: "none" without tools, "auto" with them."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    @property
    def prefix_reasoning(self) -> str | None:
        """The `reasoning_content` of a prefix-completion message (reasoner), or None."""
        last = self.messages[-1] if self.messages else None
        if isinstance(last, AssistantMessage) and last.prefix:
            return last.reasoning_content
        return None

    @property
    def assistant_prefix(self) -> str | None:
        """The text the reply must start with (chat prefix completion, beta), or None."""
        last = self.messages[-1] if self.messages else None
        if isinstance(last, AssistantMessage) and last.prefix:
            return last.content or ""
        return None


class CompletionRequest(GenerationRequest):
    """`POST /beta/completions` (spec §7): FIM when `suffix` is given, else plain."""

    prompt: str
    suffix: str | None = None
    echo: bool | None = None
    logprobs: int | None = None


# -- pass 1: parsing -------------------------------------------------------------------------


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate the JSON body (passes 1 and 2 that need no model knowledge)."""
    request = _parse(body, ChatCompletionRequest)
    if request.max_tokens is None and request.max_completion_tokens is not None:
        request = request.model_copy(update={"max_tokens": request.max_completion_tokens})
    check_values(request)
    return request


def parse_completion_request(body: bytes) -> CompletionRequest:
    request = _parse(body, CompletionRequest)
    check_generation_values(request)
    if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
        raise _range_error("logprobs", f"[0, {MAX_TOP_LOGPROBS}]")
    return request


def _parse(body: bytes, model: type[_RequestT]) -> _RequestT:
    payload = parse_json_object(body, model.__name__)
    try:
        return model.model_validate(payload, strict=True)
    except ValidationError as exc:
        raise deserialize_error(exc) from None


def parse_json_object(body: bytes, struct: str = "ChatCompletionRequest") -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"Failed to parse the request body as JSON: invalid UTF-8 at byte {exc.start}"
        ) from None
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"Failed to parse the request body as JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidRequest(
            "Failed to parse the request body as JSON: nested too deeply"
        ) from None
    if not isinstance(payload, dict):
        raise InvalidParameters(
            "Failed to deserialize the JSON body into the target type: invalid type: "
            f"{describe_json(payload)}, expected struct {struct}"
        )
    return payload


def _reject_constant(name: str) -> None:
    # NaN / Infinity / -Infinity are not JSON (Python's json accepts them by default)
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


_ROLE_TAGS = {"system", "user", "assistant", "tool"}


def error_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 1, 'user', 'content') → 'messages[1].content' (union tags dropped)."""
    path = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(previous, int) and part in _ROLE_TAGS:
            pass  # discriminated-union tag, not a field
        elif part == "str" or part.startswith(
            ("literal[", "list[", "function-", "NamedToolChoice")
        ):
            pass  # member name of a plain union
        else:
            path += f".{part}" if path else part
        previous = part
    return path


def describe_json(value: Any) -> str:
    """serde's wording for the JSON value a client sent."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "a sequence",
    "dict_type": "a map",
    "model_attributes_type": "a map",
}


def _one_of(quoted: str) -> str:
    """pydantic's "'a', 'b' or 'c'" in serde's words: "one of `a`, `b`, `c`" (two names:
    "`a` or `b`", one: "`a`")."""
    names = [f"`{name}`" for name in re.findall(r"'([^']*)'", quoted)]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} or {names[1]}"
    return "one of " + ", ".join(names)


def _reason(error: dict[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return f"missing field `{error['loc'][-1]}`"
    if kind == "union_tag_invalid":
        return f"unknown variant `{ctx['tag']}`, expected {_one_of(ctx['expected_tags'])}"
    if kind == "union_tag_not_found":
        return f"missing field `{ctx['discriminator'].strip(chr(39))}`"
    if kind == "literal_error" and isinstance(error["input"], str):
        return f"unknown variant `{error['input']}`, expected {_one_of(ctx['expected'])}"
    if kind == "literal_error":  # every literal here is a string
        return f"invalid type: {describe_json(error['input'])}, expected a string"
    if kind == "model_type":
        return f"invalid type: {describe_json(error['input'])}, expected struct {ctx['class_name']}"
    if kind in _EXPECTED:
        return f"invalid type: {describe_json(error['input'])}, expected {_EXPECTED[kind]}"
    return str(error.get("msg", kind))


def deserialize_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    # a plain union (stop, tool_choice) reports one error per member: say the member that got
    # furthest into the value; on a tie the first member, which is the documented type
    error = max(errors, key=lambda e: len(e["loc"]))
    field = error_path(error["loc"])
    path = field
    if error["type"] == "missing":  # serde names the struct that lacks the field
        path = error_path(error["loc"][:-1])
    elif error["type"] == "union_tag_invalid":  # ... and the tag field itself
        field = path = f"{field}.{error['ctx']['discriminator'].strip(chr(39))}"
    where = f"{path}: " if path else ""
    message = f"Failed to deserialize the JSON body into the target type: {where}{_reason(error)}"
    if field.startswith(("messages", "tools")):
        return InvalidRequest(message, param=field)
    return InvalidParameters(message, param=field)


# -- pass 2: values and ranges ---------------------------------------------------------------


def _range_error(field: str, interval: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid {field} value, the valid range of {field} is {interval}", param=field
    )


def check_values(req: ChatCompletionRequest) -> None:
    """Ranges and cross-field rules that need no model knowledge (spec §2.2)."""
    check_generation_values(req)
    if not req.messages:
        raise InvalidRequest(
            "Invalid messages value, messages must contain at least one message",
            param="messages",
        )
    if req.top_logprobs is not None:
        if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
            raise _range_error("top_logprobs", f"[0, {MAX_TOP_LOGPROBS}]")
        if not req.logprobs:
            raise InvalidRequest(
                "Invalid top_logprobs and logprobs value: top_logprobs requires logprobs to be "
                "true",
                param="top_logprobs",
            )
    _check_tools(req)
    _check_messages(req)


def check_generation_values(req: GenerationRequest) -> None:
    """The range rules chat and FIM completions share."""
    if req.n is not None and req.n != 1:
        raise InvalidRequest("Invalid n value (currently only n = 1 is supported)", param="n")
    if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
        raise _range_error("temperature", "[0, 2.0]")
    if req.top_p is not None and not 0.0 < req.top_p <= 1.0:
        raise _range_error("top_p", "(0, 1.0]")
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(req, name)
        if value is not None and not -2.0 <= value <= 2.0:
            raise _range_error(name, "[-2.0, 2.0]")
    if len(req.stop_list) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            f"Invalid stop value, at most {MAX_STOP_SEQUENCES} stop sequences are allowed "
            f"(got {len(req.stop_list)})",
            param="stop",
        )
    for stop in req.stop_list:
        if len(stop) > MAX_STOP_LENGTH:
            raise InvalidRequest(
                f"Invalid stop value, a stop sequence may be at most {MAX_STOP_LENGTH} "
                f"characters (got {len(stop)})",
                param="stop",
            )
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "Invalid stream_options value, stream_options is only allowed when stream is true",
            param="stream_options",
        )


def _check_tools(req: ChatCompletionRequest) -> None:
    tools = req.tools or []
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(
            f"Invalid tools value, at most {MAX_TOOLS} tools are supported (got {len(tools)})",
            param="tools",
        )
    for index, tool in enumerate(tools):
        if not FUNCTION_NAME_RE.fullmatch(tool.function.name):
            raise InvalidRequest(
                f"Invalid tools[{index}].function.name value {tool.function.name!r}: a function "
                "name must be 1 to 64 characters of a-z, A-Z, 0-9, underscores and dashes",
                param=f"tools[{index}].function.name",
            )
    choice = req.tool_choice
    if choice in (None, "none", "auto"):
        return
    if not tools:
        raise InvalidRequest(
            "Invalid tool_choice value, tool_choice other than 'none' or 'auto' needs tools",
            param="tool_choice",
        )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {
        t.function.name for t in tools
    }:
        raise InvalidRequest(
            f"Invalid tool_choice value, function {choice.function.name!r} is not in tools",
            param="tool_choice",
        )


def _check_messages(req: ChatCompletionRequest) -> None:
    last = len(req.messages) - 1
    for index, message in enumerate(req.messages):
        if isinstance(message, AssistantMessage) and message.prefix and index != last:
            raise InvalidRequest(
                f"Invalid messages[{index}].prefix value, prefix is only allowed on the last "
                "message",
                param=f"messages[{index}].prefix",
            )


# -- pass 3: features not offered yet --------------------------------------------------------

PREFIX_NEEDS_BETA = (
    'prefix is only available when using beta api (set base_url="https://api.deepseek.com/beta")'
)
JSON_SCHEMA_UNAVAILABLE = "This response_format type is unavailable now"
JSON_WORD_NEEDED = (
    "Prompt must contain the word 'json' in some form to use 'response_format' of type "
    "'json_object'."
)


STRICT_NEEDS_ALL = (
    "Invalid tools value: in strict mode every function must set strict to true ({name} does not)"
)


def check_supported(req: ChatCompletionRequest, is_beta: bool, reasoning: bool) -> None:
    """Rules that depend on the endpoint and on the model kind (spec §2.3, §8)."""
    if req.response_format is not None and req.response_format.type == "json_schema":
        raise InvalidRequest(JSON_SCHEMA_UNAVAILABLE, param="response_format")
    if req.assistant_prefix is not None and not is_beta:
        raise InvalidRequest(PREFIX_NEEDS_BETA, param="messages")
    if req.response_format is not None and req.response_format.type == "json_object":
        prompt = " ".join(m.content or "" for m in req.messages).lower()
        if "json" not in prompt:
            raise InvalidRequest(JSON_WORD_NEEDED, param="response_format")
    if reasoning:
        for name in ("logprobs", "top_logprobs"):
            value = getattr(req, name)
            if value is not None and value is not False:
                raise InvalidRequest(
                    f"deepseek-reasoner does not support the parameter `{name}`", param=name
                )
    if is_beta and req.strict_tools:
        _check_strict(req)


def _check_strict(req: ChatCompletionRequest) -> None:
    """Beta strict mode: all functions strict, each schema inside DeepSeek's subset."""
    from seekserve.api.tool_schema import check_strict_schema

    for index, tool in enumerate(req.tools or []):
        if not tool.function.strict:
            raise InvalidRequest(
                STRICT_NEEDS_ALL.format(name=repr(tool.function.name)),
                param=f"tools[{index}].function.strict",
            )
        if tool.function.parameters is not None:
            check_strict_schema(tool.function.parameters, f"tools[{index}].function.parameters")


def template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as prompt/ sees them: role, content (null → ""), and `tool_calls` /
    `tool_call_id` where given. The `reasoning_content` of earlier assistant turns stays out
    of the prompt, and so does a prefix-completion message (its text follows the generation
    prompt instead)."""
    messages = req.messages[:-1] if req.assistant_prefix is not None else req.messages
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if isinstance(message, AssistantMessage) and message.tool_calls:
            item["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        elif isinstance(message, ToolMessage):
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out
