"""Server-sent events framing, as DeepSeek sends it: compact JSON, `data: [DONE]` last."""

from __future__ import annotations

import json
from typing import Any

DONE = "data: [DONE]\n\n"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def event(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"
