"""The KV caches of conversations, kept between requests so a re-sent conversation pays only for its new turn.

OpenAI clients send the whole message list every turn. Each finished request leaves its KV cache
here with the token ids it holds, under its clip's feature key (the visual tokens decide what the
placeholder positions hold). A new request takes the entry of the same clip that shares the longest
prefix with its ids: ``conversation.Conversation`` crops it to that prefix and feeds only the rest,
so the answer equals a fresh prefill. Entries are bounded in bytes, least recently used out first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vqa_cli.model.conversation import common_prefix
from vqa_cli.model.features import BytesLRU

if TYPE_CHECKING:
    from transformers.cache_utils import Cache


def cache_bytes(cache: Cache) -> int:
    """Bytes held by a transformers ``DynamicCache`` (keys and values of every layer)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if tensor is not None and hasattr(tensor, "numel"):
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class Prefix:
    ids: list[int]  # the token ids the cache holds
    cache: Cache  # a DynamicCache


class PrefixCache:
    """Conversation KV caches by clip: ``take`` the best one for a prompt, ``put`` it back when done."""

    def __init__(self, max_bytes: int) -> None:
        self._entries = BytesLRU(max_bytes)  # handle -> (clip key, Prefix)
        self._next = 0
        self._lock = threading.Lock()
        self.reused_tokens = 0

    def take(self, key: str, ids: list[int]) -> Prefix | None:
        """Remove and return the entry of clip ``key`` sharing the longest prefix with ``ids`` (None: none
        shares any). The caller owns it until ``put``: it may crop and extend it."""
        with self._lock:
            best, best_len = None, 0
            for handle, (entry_key, prefix) in self._entries.items():
                if entry_key == key:
                    shared = common_prefix(ids, prefix.ids)
                    if shared > best_len:
                        best, best_len = handle, shared
            if best is None:
                return None
            self.reused_tokens += min(best_len, len(ids) - 1)
            return self._entries.pop(best)[1]

    def put(self, key: str, prefix: Prefix) -> None:
        size = cache_bytes(prefix.cache)
        with self._lock:
            self._entries.add(self._next, (key, prefix), size)
            self._next += 1

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._entries.bytes,
                    "max_bytes": self._entries.max_bytes, "reused_tokens": self.reused_tokens}
