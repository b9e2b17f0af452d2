"""Tool calls in generated text: the markup formats models use, and streaming parsers that
turn text deltas into content and tool-call events.

    hermes       <tool_call>
                 {"name": "get_weather", "arguments": {"city": "Paris"}}
                 </tool_call>
                 Qwen 2.5 / Qwen 3 and Hermes models; also what the generic tool prompt asks
                 for (prompt/tools.py), as the markup most chat models saw in training.
    deepseek_v3  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
                 ```json
                 {"city": "Paris"}
                 ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
    deepseek_v31 the same without "function", the newline and the fence:
                 <｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>
                 (the DeepSeek parser reads both; the format decides what prompts and grammars
                 write).

A parser's events, in output order: `str` content, `ToolCallStart` (a call's index and
name, known before its arguments) and `ToolCallArgs` (a piece of the arguments text, passed
through as the model wrote it, so streamed pieces join to the non-stream value). Markup never
reaches content, also when a tag is split across deltas; whitespace around calls is dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass

from seekserve.output.markup import find_first, partial_marker_len, safe_len


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgs:
    index: int
    text: str


ToolEvent = str | ToolCallStart | ToolCallArgs

_ID_ALPHABET = string.ascii_letters + string.digits


def tool_call_id(request_id: str, index: int) -> str:
    """DeepSeek's id shape (`call_00_` + 24 letters and digits), derived from the request id
    so non-stream and stream agree and tests can predict it."""
    digest = hashlib.sha256(f"{request_id}/{index}".encode()).digest()
    return f"call_{index:02d}_" + "".join(_ID_ALPHABET[b % 62] for b in digest[:24])


# -- formats ---------------------------------------------------------------------------------

DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DS_CALLS_END = "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DS_CALL_END = "<｜tool▁call▁end｜>"
DS_SEP = "<｜tool▁sep｜>"


@dataclass(frozen=True)
class ToolCallFormat:
    """How a model writes calls: for prompts (render), grammars (tag parts) and parsing."""

    name: str
    begin_prefix: str
    """Text before the function name of one call."""
    name_suffix: str
    """Text between the function name and its arguments."""
    end: str
    """Text after the arguments of one call."""
    separator: str
    """Text between two calls."""
    outer: tuple[str, str] = ("", "")
    """Text around the whole run of calls."""

    def render(self, calls: list[tuple[str, str]]) -> str:
        """The markup of (name, arguments JSON text) calls, as the model would write them."""
        body = self.separator.join(
            f"{self.begin_prefix}{name}{self.name_suffix}{arguments}{self.end}"
            for name, arguments in calls
        )
        return f"{self.outer[0]}{body}{self.outer[1]}"

    def parser(self) -> ToolCallParser:
        return HermesParser() if self.name == "hermes" else DeepSeekParser()


HERMES = ToolCallFormat(
    "hermes",
    begin_prefix='<tool_call>\n{"name": "',
    name_suffix='", "arguments": ',
    end="}\n</tool_call>",
    separator="\n",
)
DEEPSEEK_V3 = ToolCallFormat(
    "deepseek_v3",
    begin_prefix=f"{DS_CALL_BEGIN}function{DS_SEP}",
    name_suffix="\n```json\n",
    end=f"\n```{DS_CALL_END}",
    separator="\n",
    outer=(DS_CALLS_BEGIN, DS_CALLS_END),
)
DEEPSEEK_V31 = ToolCallFormat(
    "deepseek_v31",
    begin_prefix=DS_CALL_BEGIN,
    name_suffix=DS_SEP,
    end=DS_CALL_END,
    separator="",
    outer=(DS_CALLS_BEGIN, DS_CALLS_END),
)


def format_for_template(template_source: str) -> ToolCallFormat:
    """The format a chat template teaches its model: DeepSeek's tokens when the template
    writes them, else Hermes `<tool_call>` markup."""
    if DS_CALL_BEGIN in template_source:
        return DEEPSEEK_V3 if "```json" in template_source else DEEPSEEK_V31
    return HERMES


# -- parsers ---------------------------------------------------------------------------------


class ToolCallParser(ABC):
    """Text deltas in, events out; `finish` flushes what was held back."""

    def __init__(self) -> None:
        self.num_calls = 0
        self._buffer = ""
        self._after_call = False  # drop the whitespace that follows a call
        self._dropped = ""

    def feed(self, text: str) -> list[ToolEvent]:
        self._buffer += text
        events: list[ToolEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        self._flush(events)
        self._buffer = ""
        return events

    @abstractmethod
    def _step(self, events: list[ToolEvent]) -> bool:
        """Consume what can be decided from the buffer; True to be called again."""

    @abstractmethod
    def _flush(self, events: list[ToolEvent]) -> None:
        """Emit what the buffer still holds at the end of generation."""

    def _content(self, events: list[ToolEvent], text: str) -> None:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        if text:
            events.append(text)

    def _scan_content(self, events: list[ToolEvent], markers: tuple[str, ...]) -> str | None:
        """In content: emit up to the first marker and return it (consumed), or emit what is
        safe and return None."""
        index, marker = find_first(self._buffer, markers)
        if marker is not None:
            before = self._buffer[:index]
            self._content(events, before.rstrip())
            self._dropped = before[len(before.rstrip()) :]  # given back if no call follows
            self._buffer = self._buffer[index + len(marker) :]
            return marker
        end = safe_len(self._buffer, markers)
        self._content(events, self._buffer[:end])
        self._buffer = self._buffer[end:]
        return None

    def _flush_content(self, events: list[ToolEvent]) -> None:
        text = self._buffer
        if self.num_calls:
            text = text.rstrip()
        self._content(events, text)


class _JsonValueEnd:
    """Finds where one JSON value ends in streamed text (no validation beyond nesting)."""

    def __init__(self) -> None:
        self.started = False
        self.done = False
        self.first = ""
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, text: str) -> tuple[int, int]:
        """(start, end): text[start:end] belongs to the value; `done` once it closed."""
        start = 0
        if not self.started:
            stripped = text.lstrip()
            start = len(text) - len(stripped)
            if not stripped:
                return start, start
            self.started, self.first = True, stripped[0]
        for index in range(start, len(text)):
            char = text[index]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._in_string = False
                    if self._depth == 0:
                        self.done = True
                        return start, index + 1
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                if self._depth == 0:  # a scalar ended by its container
                    self.done = True
                    return start, index
                self._depth -= 1
                if self._depth == 0:
                    self.done = True
                    return start, index + 1
            elif self._depth == 0 and (char == "," or char.isspace()):
                self.done = True  # a bare scalar (number, true, null)
                return start, index
        return start, len(text)


_HERMES_HEAD = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)


class HermesParser(ToolCallParser):
    START, END = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        super().__init__()
        self._state = "content"
        self._value = _JsonValueEnd()
        self._string_value = ""  # arguments written as a JSON string: decoded at its end

    def _step(self, events: list[ToolEvent]) -> bool:
        if self._state == "content":
            if self._scan_content(events, (self.START,)) is None:
                return False
            self._state = "head"
            return True
        if self._state == "head":
            return self._head(events)
        if self._state == "arguments":
            return self._arguments(events)
        # "tail": the rest of the call object, up to the end tag
        index = self._buffer.find(self.END)
        if index < 0:
            return False
        self._buffer = self._buffer[index + len(self.END) :]
        self._end_call()
        return True

    def _head(self, events: list[ToolEvent]) -> bool:
        match = _HERMES_HEAD.match(self._buffer)
        if match is not None:
            events.append(ToolCallStart(self.num_calls, json.loads(f'"{match.group(1)}"')))
            self._buffer = self._buffer[match.end() :]
            self._state, self._value, self._string_value = "arguments", _JsonValueEnd(), ""
            return True
        stripped = self._buffer.lstrip()
        if stripped and not stripped.startswith("{"):  # prose that mentions the tag
            self._content(events, self._dropped + self.START)
            self._state = "content"
            return True
        index = self._buffer.find(self.END)
        if index < 0:
            return False  # keep reading: the name may come after the arguments
        body, self._buffer = self._buffer[:index], self._buffer[index + len(self.END) :]
        self._whole_call(events, body, closed=True)
        return True

    def _whole_call(self, events: list[ToolEvent], body: str, closed: bool) -> None:
        """A call body read whole (keys in another order, or unterminated): a call when it
        parses, else the text stays content."""
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            call = None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            self._content(events, self._dropped + self.START + body + (self.END if closed else ""))
            self._state = "content"
            return
        arguments = call.get("arguments", call.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        events.append(ToolCallStart(self.num_calls, call["name"]))
        events.append(ToolCallArgs(self.num_calls, arguments))
        self._end_call()

    def _arguments(self, events: list[ToolEvent]) -> bool:
        start, end = self._value.feed(self._buffer)
        piece, self._buffer = self._buffer[start:end], self._buffer[end:]
        if self._value.first == '"':  # arguments as a JSON string: pass on its decoded text
            self._string_value += piece
            if self._value.done:
                try:
                    piece = json.loads(self._string_value)
                except json.JSONDecodeError:
                    piece = self._string_value
        if piece and (self._value.first != '"' or self._value.done):
            events.append(ToolCallArgs(self.num_calls, piece))
        if not self._value.done:
            return False
        self._state = "tail"
        return True

    def _end_call(self) -> None:
        self.num_calls += 1
        self._state = "content"
        self._after_call = True

    def _flush(self, events: list[ToolEvent]) -> None:
        if self._state == "content":
            self._flush_content(events)
        elif self._state == "head":
            self._whole_call(events, self._buffer, closed=False)
        elif self._state == "arguments":
            if self._value.first == '"' and self._string_value:
                events.append(ToolCallArgs(self.num_calls, self._string_value))
            self.num_calls += 1
        elif self._state == "tail":
            self.num_calls += 1


class DeepSeekParser(ToolCallParser):
    """DeepSeek-V3's tool-call tokens, V3 (`function<sep>name\\n```json ...```) and V3.1
    (`name<sep>arguments`) layouts."""

    _FENCE = "```json\n"

    def __init__(self) -> None:
        super().__init__()
        self._state = "content"
        self._fenced = False

    def _step(self, events: list[ToolEvent]) -> bool:
        if self._state == "content":
            marker = self._scan_content(events, (DS_CALLS_BEGIN, DS_CALL_BEGIN))
            if marker is None:
                return False
            self._state = "calls" if marker == DS_CALLS_BEGIN else "head"
            return True
        if self._state == "calls":  # between calls: the next call or the end of the run
            index, marker = find_first(self._buffer, (DS_CALL_BEGIN, DS_CALLS_END))
            if marker is None:
                return False
            self._buffer = self._buffer[index + len(marker) :]
            if marker == DS_CALLS_END:
                self._state, self._after_call = "content", True
            else:
                self._state = "head"
            return True
        if self._state == "head":
            return self._head(events)
        return self._arguments(events)

    def _head(self, events: list[ToolEvent]) -> bool:
        index = self._buffer.find(DS_SEP)
        if index < 0:
            return False
        head, rest = self._buffer[:index].strip(), self._buffer[index + len(DS_SEP) :]
        self._fenced = False
        if head == "function":  # V3: the name follows on its own line, then a json fence
            newline = rest.find("\n")
            if newline < 0:
                return False
            head, rest = rest[:newline].strip(), rest[newline + 1 :]
            if self._FENCE.startswith(rest) and rest != self._FENCE:
                return False  # the fence may still be arriving
            if rest.startswith(self._FENCE):
                rest, self._fenced = rest[len(self._FENCE) :], True
        events.append(ToolCallStart(self.num_calls, head))
        self._buffer, self._state = rest, "arguments"
        return True

    def _arguments(self, events: list[ToolEvent]) -> bool:
        index = self._buffer.find(DS_CALL_END)
        if index >= 0:
            piece = self._buffer[:index]
            if self._fenced:
                piece = piece.rstrip().removesuffix("```").rstrip()
            if piece:
                events.append(ToolCallArgs(self.num_calls, piece))
            self._buffer = self._buffer[index + len(DS_CALL_END) :]
            self.num_calls += 1
            self._state = "calls"
            return True
        end = len(self._buffer) - partial_marker_len(self._buffer, (DS_CALL_END,))
        while self._fenced and end > 0 and self._buffer[end - 1] in "`\n":
            end -= 1  # maybe the closing fence
        if end > 0:
            events.append(ToolCallArgs(self.num_calls, self._buffer[:end]))
            self._buffer = self._buffer[end:]
        return False

    def _flush(self, events: list[ToolEvent]) -> None:
        if self._state == "content":
            self._flush_content(events)
        elif self._state == "arguments":
            piece = self._buffer
            if self._fenced:
                piece = piece.rstrip().removesuffix("```").rstrip()
            if piece:
                events.append(ToolCallArgs(self.num_calls, piece))
            self.num_calls += 1
