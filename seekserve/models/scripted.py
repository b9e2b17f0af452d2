"""A test model whose logits force scripted replies, run through the real engine.

HTTP and engine tests use it to assert exact output (tool-call markup, `<think>` blocks, …)
whatever a real model would say. It has no weights; config.json holds the scripts:

    {"model_type": "scripted", "eos_token_id": 2,
     "scripts": [{"key": [ids…], "reply": [ids…]}, …], …}

A request's script is the one whose key occurs in its prompt (the latest occurrence wins;
none: the reply is empty). Generated token n is reply[n], then eos_token_id for ever.

Its "KV cache" holds token ids: one layer, one KV head, head_dim 1, each scheduled token's
id written at its slot (K half). A request's history is read back through its attention
group's kv_index, so prefix-cached blocks, chunked prefill and recompute after preemption
all go through the engine's real paging. The prompt length is learned at a request's first
sampled step (that step ends its prompt) and remembered by request id; ids must not be
reused for a different prompt over the model's life (the engine and API never do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.runner.inputs import ModelInputs

# logit of every token but the forced one (the forced one gets 0): its probability
# underflows to 0 at any temperature the API allows, and it stays finite for logprobs
_OTHER_LOGIT = -1e4


@dataclass(frozen=True, slots=True)
class _Playback:
    prompt: list[int]
    reply: list[int]


class ScriptedForCausalLM(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.config = cfg
        if (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim) != (1, 1, 1):
            raise ValueError(
                "a scripted model's config.json needs num_hidden_layers, num_key_value_heads "
                f"and head_dim of 1 (its KV cache holds token ids), got {cfg.num_hidden_layers}, "
                f"{cfg.num_key_value_heads}, {cfg.head_dim}"
            )
        eos = cfg.hf_config["eos_token_id"]
        self.eos_token_id: int = eos if isinstance(eos, int) else eos[0]
        self.scripts = [(s["key"], s["reply"]) for s in cfg.hf_config.get("scripts", [])]
        for key, reply in self.scripts:
            if not key or not all(0 <= t < cfg.vocab_size for t in key + reply):
                raise ValueError(f"bad script {key} -> {reply}: empty key or id out of vocab")
        self._playbacks: dict[str, _Playback] = {}  # request id -> its prompt and reply
        # (2, num_blocks, block_size, 1, 1); bound by the model runner
        self.kv_cache = torch.empty(0)

    @property
    def attention_layers(self) -> list[ScriptedForCausalLM]:
        """The one "layer" whose `kv_cache` the runner binds: this module."""
        return [self]

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """(T, 1): at each sampling token, the id to force as a float (0 elsewhere)."""
        if self.kv_cache.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"the scripted model stores token ids in its KV cache and needs dtype "
                f"float32, not {self.kv_cache.dtype}"
            )
        ids = self.kv_cache[0].view(-1)  # (num_slots,) token id at each cache slot
        ids.index_copy_(0, inputs.slot_mapping, inputs.token_ids.to(ids.dtype))
        histories = {}  # flat index of a request's last token -> its token ids so far
        for group in inputs.groups:
            rows = torch.arange(group.q_index.shape[0], device=group.q_index.device)
            last_q = group.q_valid.sum(dim=1) - 1  # (B,)
            flat_last = group.q_index[rows, last_q].tolist()
            lengths = group.mask[rows, 0, last_q].sum(dim=-1).tolist()  # kv 0..position
            for b, (flat, length) in enumerate(zip(flat_last, lengths, strict=True)):
                histories[flat] = group.kv_index[b, :length]
        forced = torch.zeros((inputs.token_ids.shape[0], 1), device=ids.device)
        for flat, request_id in zip(
            inputs.logits_indices.tolist(), inputs.sample_request_ids, strict=True
        ):
            history = [int(t) for t in ids[histories[flat]].tolist()]
            forced[flat, 0] = self._next_token(request_id, history)
        return forced

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(S, 1) forced ids → (S, vocab) fp32: 0 at the forced id, -1e4 elsewhere."""
        shape = (hidden.shape[0], self.config.vocab_size)
        logits = torch.full(shape, _OTHER_LOGIT, dtype=torch.float32, device=hidden.device)
        return logits.scatter_(1, hidden.long(), 0.0)

    def _next_token(self, request_id: str, history: list[int]) -> int:
        playback = self._playbacks.get(request_id)
        if playback is None or history[: len(playback.prompt)] != playback.prompt:
            # first sample of this request: the history is exactly its prompt
            playback = _Playback(history, self._reply_for(history))
            self._playbacks[request_id] = playback
        n = len(history) - len(playback.prompt)
        return playback.reply[n] if n < len(playback.reply) else self.eos_token_id

    def _reply_for(self, prompt: list[int]) -> list[int]:
        """The reply of the script whose key ends last in `prompt` (the longer key on a tie);
        [] when no key occurs."""
        best: tuple[int, int] = (-1, 0)
        reply: list[int] = []
        for key, script_reply in self.scripts:
            end = _last_end(prompt, key)
            if end >= 0 and (end, len(key)) > best:
                best, reply = (end, len(key)), script_reply
        return reply


def _last_end(tokens: list[int], key: list[int]) -> int:
    """End index of the last occurrence of `key` in `tokens`, or -1."""
    for start in range(len(tokens) - len(key), -1, -1):
        if tokens[start : start + len(key)] == key:
            return start + len(key)
    return -1
