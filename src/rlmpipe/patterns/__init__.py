"""The seed's patterns, as steps the run engine executes: map, sliding window, tree reduce."""

from rlmpipe.patterns.map import map_chunks
from rlmpipe.patterns.reduce import TreeReducer
from rlmpipe.patterns.window import sliding_window

__all__ = ["map_chunks", "sliding_window", "TreeReducer"]
