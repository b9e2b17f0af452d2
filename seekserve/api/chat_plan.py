"""What a chat request turns into before the engine sees it: the prompt (tools, history,
prefix completion, an opened think block), the grammar its output must follow, and how its
output is to be read back (reasoning split, tool-call markup).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from seekserve.api.protocol import ChatCompletionRequest, NamedToolChoice, template_messages
from seekserve.api.state import ServedModel
from seekserve.api.tool_schema import MAX_DEPTH, nesting_depth
from seekserve.errors import InvalidRequest
from seekserve.output.message import MessageParser
from seekserve.output.reasoning import THINK_CLOSE, THINK_OPEN, ReasoningParser
from seekserve.output.tool_calls import ToolCallFormat, format_for_template
from seekserve.prompt.chat_template import ChatTemplateError
from seekserve.prompt.tools import render_chat
from seekserve.sampling.grammars import Think, json_object_grammar, tool_call_grammar
from seekserve.sampling_params import GrammarSpec


@dataclass(frozen=True)
class ChatPlan:
    prompt_token_ids: list[int]
    reasoning: bool
    """Split `<think>` output into reasoning_content (a thinking model)."""
    starts_in_reasoning: bool
    """The prompt leaves the output inside the think block."""
    tool_format: ToolCallFormat | None
    """Parse tool calls in this markup (None: tools off, all text is content)."""
    grammar: GrammarSpec | None

    def parser(self) -> MessageParser:
        reasoning = ReasoningParser(self.starts_in_reasoning) if self.reasoning else None
        tools = self.tool_format.parser() if self.tool_format is not None else None
        return MessageParser(reasoning, tools)


async def plan_chat(req: ChatCompletionRequest, served: ServedModel, is_beta: bool) -> ChatPlan:
    reasoning = served.config.is_reasoning
    choice = req.effective_tool_choice
    tools_on = bool(req.tools) and choice != "none"
    fmt = format_for_template(served.chat_template.source)
    tools = [tool.model_dump(exclude_none=True) for tool in req.tools or []] if tools_on else None
    try:
        text = render_chat(served.chat_template, template_messages(req), tools, fmt)
    except ChatTemplateError as exc:
        raise InvalidRequest(f"Invalid messages value: {exc}", param="messages") from None
    text, starts_in_reasoning, think = _continue_prompt(req, text, reasoning)
    grammar = await _grammar(req, served, fmt if tools_on else None, think, is_beta)
    return ChatPlan(
        prompt_token_ids=served.tokenizer.encode(text),
        reasoning=reasoning,
        starts_in_reasoning=starts_in_reasoning,
        tool_format=fmt if tools_on else None,
        grammar=grammar,
    )


def _continue_prompt(
    req: ChatCompletionRequest, text: str, reasoning: bool
) -> tuple[str, bool, Think]:
    """The text after the generation prompt (chat prefix completion), whether the output
    starts inside the think block, and the think part a grammar must allow first."""
    prefix = req.assistant_prefix
    opened = reasoning and text.rstrip().endswith(THINK_OPEN)
    if not reasoning or prefix is None:
        text += prefix or ""
        think: Think = "opened" if opened else "open" if reasoning else "none"
        return text, opened, think
    # the reasoner's prefix: `reasoning_content` continues the think block, `content` the
    # answer after it
    thought = req.prefix_reasoning or ""
    if not prefix:
        return text + ("" if opened else f"{THINK_OPEN}\n") + thought, True, "opened"
    if opened or thought:
        text += ("" if opened else f"{THINK_OPEN}\n") + f"{thought}\n{THINK_CLOSE}\n\n"
    return text + prefix, False, "none"


async def _grammar(
    req: ChatCompletionRequest,
    served: ServedModel,
    fmt: ToolCallFormat | None,
    think: Think,
    is_beta: bool,
) -> GrammarSpec | None:
    """The output's grammar: a forced or strict tool call, or JSON mode. Compiled here, off
    the event loop, so a schema xgrammar rejects is the client's 400, not an engine error."""
    choice = req.effective_tool_choice
    strict = is_beta and req.strict_tools
    if fmt is not None and (choice != "auto" or strict):
        functions = [(t.function.name, t.function.parameters) for t in req.tools or []]
        if isinstance(choice, NamedToolChoice):
            functions = [f for f in functions if f[0] == choice.function.name]
        mode: Any = "named" if isinstance(choice, NamedToolChoice) else choice
        spec = GrammarSpec(
            "structural_tag",
            tool_call_grammar(fmt, functions, mode, think),
            end_when_complete=mode == "named",
        )
        # a schema nested beyond what strict mode accepts is not handed to the compiler
        shallow = all(nesting_depth(schema) <= 2 * MAX_DEPTH for _, schema in functions)
        if shallow and await _compiles(served, spec):
            return spec
        if strict:  # name the function whose schema fails
            for name, schema in functions:
                one = GrammarSpec("structural_tag", tool_call_grammar(fmt, [(name, schema)], mode))
                if not await _compiles(served, one):
                    raise InvalidRequest(
                        f"Invalid tools value: the parameters schema of function {name!r} "
                        "cannot be compiled into a grammar",
                        param="tools",
                    )
        # not strict: keep the forced call's shape, with any JSON object as arguments
        loose = [(name, {"type": "object"}) for name, _ in functions]
        return GrammarSpec(
            "structural_tag",
            tool_call_grammar(fmt, loose, mode, think),
            end_when_complete=mode == "named",
        )
    if req.response_format is not None and req.response_format.type == "json_object":
        if think == "none":
            return GrammarSpec("json_object")
        spec = GrammarSpec("structural_tag", json_object_grammar(think))
        if not await _compiles(served, spec):
            raise RuntimeError("the JSON-after-thinking grammar does not compile")
        return spec
    return None


async def _compiles(served: ServedModel, spec: GrammarSpec) -> bool:
    try:
        await asyncio.to_thread(served.grammars.compile_structural_tag, spec.source)
    except ValueError:
        return False
    return True
