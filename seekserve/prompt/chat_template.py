"""Chat templates (Jinja, as shipped in GGUF and tokenizer_config.json), rendered sandboxed.

A template comes from a model file, which is untrusted input: it is compiled in jinja2's
`ImmutableSandboxedEnvironment`, which refuses attribute walks to Python internals and
mutation of the objects it is given. The globals and filters are the ones Hugging Face
templates expect (`raise_exception`, `strftime_now`, `tojson`).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from jinja2 import TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model ships without a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The template rejected the conversation (its `raise_exception`) or failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(
        self, source: str | None, bos_token: str | None = None, eos_token: str | None = None
    ) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=Undefined, autoescape=False
        )
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self.source = source or CHATML_TEMPLATE
        self._template = env.from_string(self.source)
        self._bos_token = bos_token or ""
        self._eos_token = eos_token or ""
        self.takes_tools = re.search(r"\btools\b", self.source) is not None
        """The template renders a `tools` list itself (else prompt/tools.py describes them)."""

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text for `messages` (dicts with role/content, as on the wire)."""
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                **extra,
            )
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise ChatTemplateError(f"chat template failed to render: {exc}") from exc


__all__ = ["CHATML_TEMPLATE", "ChatTemplate", "ChatTemplateError"]
