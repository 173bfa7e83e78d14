"""Tree reduce, streaming: merge results hierarchically so that every merge call fits the model's
context, however many results there are.

Results arrive in order and are buffered per level; when the next one would push a level's
buffer past ``max_input_tokens``, that buffer is merged (one step) into one result of the level
above, and so on up. Memory holds at most one buffer per level (log of the number of results);
each merge step's key is derived from its inputs' keys, so a resume replays the same tree.
"""

from __future__ import annotations

from typing import Any, Callable


class TreeReducer:
    def __init__(self, run, doc_id: str, name: str, merge: Callable[[list[Any]], Any],
                 size: Callable[[Any], int], max_input_tokens: int):
        if max_input_tokens < 1:
            raise ValueError("max_input_tokens must be positive")
        self.run, self.doc_id, self.name = run, doc_id, name
        self.merge, self.size, self.max_input_tokens = merge, size, max_input_tokens
        self.levels: list[list[tuple[str, Any, int]]] = []
        self.merges = 0

    def add(self, key: str, value: Any) -> None:
        """Add the next result (``key`` names it: the step key of whatever produced it)."""
        self._push(0, key, value)

    def _push(self, level: int, key: str, value: Any) -> None:
        while len(self.levels) <= level:
            self.levels.append([])
        tokens = self.size(value)
        buffer = self.levels[level]
        if buffer and sum(t for _, _, t in buffer) + tokens > self.max_input_tokens:
            self._flush(level)
        self.levels[level].append((key, value, tokens))

    def _flush(self, level: int) -> None:
        buffer, self.levels[level] = self.levels[level], []
        self._push(level + 1, *self._merge(buffer)[:2])

    def _merge(self, group: list[tuple[str, Any, int]]) -> tuple[str, Any, int]:
        if len(group) == 1:  # nothing to merge it with: promote it unchanged
            return group[0]
        keys = [key for key, _, _ in group]
        values = [value for _, value, _ in group]
        key = self.run.key(self.name, self.doc_id, None, inputs=keys)
        merged = self.run.step(self.name, lambda: self.merge(values), doc_id=self.doc_id, key=key)
        self.merges += 1
        return key, merged, self.size(merged)

    def finish(self) -> Any:
        """Merge everything left into one result (None if nothing was added)."""
        # Higher levels hold earlier parts of the document: this is document order.
        items = [item for level in reversed(self.levels) for item in level]
        self.levels = []
        while len(items) > 1:
            groups: list[list[tuple[str, Any, int]]] = []
            for item in items:
                if groups and sum(t for _, _, t in groups[-1]) + item[2] <= self.max_input_tokens:
                    groups[-1].append(item)
                else:
                    groups.append([item])
            if all(len(group) == 1 for group in groups):
                raise ValueError(
                    f"{self.name}: results of {max(t for _, _, t in items)} tokens cannot be merged within "
                    f"{self.max_input_tokens} tokens: allow a larger merge input or ask for shorter results"
                )
            items = [self._merge(group) for group in groups]
        return items[0][1] if items else None
