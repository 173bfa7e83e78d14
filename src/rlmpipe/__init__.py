"""rlmpipe: language-model programs over documents larger than a context window, reliably.

Layers, left to right (each imports only those to its left, and ``lm``)::

    ingest -> chunking -> runtime -> monitor      apps/ use everything; cli is a thin shell
"""

__version__ = "0.1.0"
