"""The model of a run made without one (``--lm none``).

The engine still gets an LM to record and fingerprint (as "none"); a step that asks it anything
fails at once, and the run stops saying how to give a model, instead of a pipeline guessing.
"""

from __future__ import annotations

import dspy
from dspy.utils.exceptions import LMNotConfiguredError

from rlmpipe.lm.models import NONE

MESSAGE = ("this run has no language model (--lm none): give one with --lm (e.g. --lm openai/gpt-4o-mini), "
           "RLMPIPE_LM or rlmpipe.toml")


class _Refuse:
    """A DSPy engine (``complete(Request) -> Response``) that answers nothing."""

    def complete(self, request):
        raise LMNotConfiguredError(MESSAGE, model=NONE)  # DSPy passes its own errors through


def NoLM() -> dspy.LM:  # noqa: N802 (reads as the class it stands for)
    return dspy.LM(NONE, engine=_Refuse(), cache=False, num_retries=0)
