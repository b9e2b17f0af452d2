"""Chat templates render like transformers' and cannot reach Python internals."""

from pathlib import Path

import pytest

from seekserve.prompt.chat_template import ChatTemplate, ChatTemplateError

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
]


def test_smollm2_template_matches_transformers(smollm2_gguf: Path):
    from transformers import AutoTokenizer

    from seekserve.prompt.tokenizer import Tokenizer

    ours = Tokenizer.from_gguf(smollm2_gguf)
    template = ChatTemplate(ours.chat_template, ours.bos_token, ours.eos_token)
    hf = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    expected = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert template.render(MESSAGES) == expected
    assert template.render(MESSAGES).endswith("<|im_start|>assistant\n")


def test_default_template_is_chatml():
    rendered = ChatTemplate(None).render(MESSAGES[:2])
    assert rendered == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.__class__.__mro__[1].__subclasses__() }}",
        "{{ raise_exception.__globals__['os'].system('echo pwned') }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{% set x = messages.append({'role': 'x'}) %}{{ x }}",
    ],
)
def test_hostile_templates_fail_safe(source):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render(MESSAGES)


def test_raise_exception_reaches_the_caller():
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        template.render(MESSAGES)
