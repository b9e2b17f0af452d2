"""Prompt side of a request: tokenizer loading, chat templates, tool prompt injection."""
