"""`seekserve chat` (seekserve/chat_repl.py), one more client of the live scripted server:
through a pseudo-terminal as a person types (pexpect), and in-process with text streams."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pexpect
import pytest

from seekserve.chat_repl import ChatOptions, run_repl
from tests.api.live import LiveServer

SEEKSERVE = str(Path(sys.executable).with_name("seekserve"))
USAGE = re.compile(r"\[usage\] prompt_tokens=(\d+) completion_tokens=(\d+)")
PROMPT = "you> "


def spawn(*args: str) -> pexpect.spawn:
    child = pexpect.spawn(SEEKSERVE, ["chat", *args], encoding="utf-8", timeout=60)
    child.expect_exact(PROMPT)
    return child


def turn(child: pexpect.spawn, text: str, reply: str) -> tuple[int, int]:
    """Type one line; the reply streams back, then the usage line: (prompt, completion)."""
    child.sendline(text)
    child.expect_exact(reply)
    child.expect(USAGE)
    prompt_tokens, completion_tokens = (int(n) for n in child.match.groups())
    child.expect_exact(PROMPT)
    return prompt_tokens, completion_tokens


def num_prompt_tokens(server: LiveServer, messages: list[dict[str, str]]) -> int:
    served = server.app.state.seekserve.models["deepseek-chat"]
    return len(served.tokenizer.encode(served.chat_template.render(messages)))


def test_two_turns_share_history_then_reset(server: LiveServer):
    child = spawn("--url", server.base_url, "--verbose", "--temperature", "0")
    first = {"role": "user", "content": "remember the number seven"}
    second = {"role": "user", "content": "what number did I say"}
    assert turn(child, first["content"], "Noted: seven.")[0] == num_prompt_tokens(server, [first])
    # the second request carries the first turn
    history = [first, {"role": "assistant", "content": "Noted: seven."}, second]
    assert turn(child, second["content"], "You said seven.")[0] == num_prompt_tokens(
        server, history
    )
    child.sendline("/reset")
    child.expect_exact("(conversation cleared)")
    child.expect_exact(PROMPT)
    # after /reset the same question goes alone
    assert turn(child, second["content"], "You said seven.")[0] == num_prompt_tokens(
        server, [second]
    )
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_reasoning_is_dimmed_and_eof_quits(server: LiveServer):
    child = spawn("--url", server.base_url, "--model-name", "deepseek-reasoner")
    child.sendline("think please")
    child.expect_exact("\x1b[2mthinking: \x1b[0m")
    # reasoning deltas dimmed one by one, then the answer on its own line (a pty ends lines
    # with \r\n)
    child.expect_exact("\x1b[2m greeting\x1b[0m\x1b[2m.\x1b[0m\r\nHello!\r\n")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_errors_are_shown_and_the_chat_goes_on(server: LiveServer):
    out = io.StringIO()
    stdin = io.StringIO("remember the number seven\n/help\n")
    status = run_repl(server.base_url, ChatOptions(model="deepseek-coder"), stdin=stdin, out=out)
    assert status == 0
    assert out.getvalue().endswith(
        "you> error 400: Model Not Exist\nyou> commands: /reset clears the conversation, "
        "/exit (or Ctrl-D) quits, /help shows this\nyou> \n"
    )


def test_system_message_and_max_tokens(server: LiveServer):
    out = io.StringIO()
    options = ChatOptions(system="Be brief.", max_tokens=2, is_verbose=True)
    run_repl(server.base_url, options, stdin=io.StringIO("remember the number seven\n"), out=out)
    text = out.getvalue()
    assert "[stopped at max_tokens]" in text and "completion_tokens=2" in text
    assert "Noted: seven." not in text  # cut short, and no colours off a terminal
    assert "\x1b[" not in text
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "remember the number seven"}
    assert f"prompt_tokens={num_prompt_tokens(server, [system, user])} " in text


@pytest.mark.parametrize("command", ["/exit", "/quit"])
def test_exit_commands(server: LiveServer, command):
    out = io.StringIO()
    stdin = io.StringIO(f"{command}\nremember the number seven\n")
    assert run_repl(server.base_url, ChatOptions(), stdin=stdin, out=out) == 0
    assert "Noted" not in out.getvalue()


def test_unreachable_server_is_reported():
    out = io.StringIO()
    run_repl("http://127.0.0.1:9", ChatOptions(), stdin=io.StringIO("Hi\n"), out=out)
    assert "error: cannot reach http://127.0.0.1:9" in out.getvalue()


def test_in_process_model(client_configs: list):
    """`--model PATH`: the server starts inside the chat process."""
    chat_dir = client_configs[0].model.model
    child = pexpect.spawn(
        SEEKSERVE,
        ["chat", "--model", chat_dir, "--dtype", "float32", "--verbose"],
        encoding="utf-8",
        timeout=120,
    )
    child.expect_exact(PROMPT)
    turn(child, "remember the number seven", "Noted: seven.")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
