"""SeekServe's exceptions and the one map from them to HTTP statuses and DeepSeek error bodies.

    SeekServeError
     ├── ApiError                 a request the client can fix; status + DeepSeek envelope
     │    ├── InvalidRequest      400  bad value or unsupported field
     │    │    ├── ContextTooLong 400  prompt + max_tokens over the context length
     │    │    ├── UnknownModel   400  "Model Not Exist"
     │    │    └── NotSupported   400  a feature this server does not offer (yet)
     │    ├── InvalidParameters   422  well-formed JSON of the wrong shape or types
     │    ├── AuthenticationFailed 401
     │    ├── InsufficientBalance 402  the key's balance is spent
     │    ├── RateLimited         429  the key's concurrency limit
     │    ├── PayloadTooLarge     413  request body over the size limit
     │    ├── NotFound            404
     │    └── Overloaded          503  admission queue full
     └── EngineError              500  internal; logged with traceback, generic text to client

Code raises; only `error_body` (used by the API's exception handlers) formats. The body shape
is DeepSeek's (spec §13.1): `{"error": {"message", "type", "param": null, "code":
"invalid_request_error"}}` — `code` is always "invalid_request_error", also for 401.
"""

from __future__ import annotations

from typing import Any


class SeekServeError(Exception):
    """Root of every error SeekServe raises on purpose."""


class ApiError(SeekServeError):
    """An error answered to the client with `status` and the DeepSeek envelope."""

    status: int = 400
    error_type: str = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ApiError):
    status = 400


class ContextTooLong(InvalidRequest):
    @classmethod
    def for_lengths(cls, max_model_len: int, num_prompt: int, num_output: int) -> ContextTooLong:
        return cls(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {num_prompt + num_output} tokens ({num_prompt} in the messages, "
            f"{num_output} in the completion). Please reduce the length of the messages or "
            "completion.",
            param="messages",
        )


class UnknownModel(InvalidRequest):
    def __init__(self, model: str, hint: str = "") -> None:
        # DeepSeek's text is exactly "Model Not Exist"; a hint may follow it.
        super().__init__("Model Not Exist" + (f" ({hint})" if hint else ""), param="model")
        self.model = model


class NotSupported(InvalidRequest):
    pass


class InvalidParameters(ApiError):
    status = 422


class AuthenticationFailed(ApiError):
    status = 401
    error_type = "authentication_error"


class NotFound(ApiError):
    status = 404


class InsufficientBalance(ApiError):
    status = 402
    error_type = "unknown_error"  # as DeepSeek sends it (spec §13.1)

    def __init__(self) -> None:
        super().__init__("Insufficient Balance")


class RateLimited(ApiError):
    status = 429
    error_type = "rate_limit_error"


class PayloadTooLarge(ApiError):
    status = 413


class Overloaded(ApiError):
    status = 503
    error_type = "server_overloaded"


class EngineError(SeekServeError):
    """An internal failure; the client sees 500 with a generic message."""


def error_body(message: str, error_type: str) -> dict[str, Any]:
    """The DeepSeek error envelope. `param` is always null on the wire, as DeepSeek sends it
    (spec §13.1); the field is named in the message (and kept on the exception for logs)."""
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": None,
            "code": "invalid_request_error",
        }
    }


def to_status_and_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The one mapping from an exception to (HTTP status, body)."""
    if isinstance(exc, ApiError):
        return exc.status, error_body(exc.message, exc.error_type)
    return 500, error_body("Server Error: an internal error occurred", "server_error")
