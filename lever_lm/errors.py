"""The common base of user-facing input errors.

``InputError`` (a ``ValueError``) marks a problem with what the user gave the pipeline: a data file, a config
value, weights or an artifact copied from elsewhere. Its message names the culprit (file, question id or config
key) on one line. ``lever_lm.runlog.script_logging`` prints such an error as that one line on the terminal, with
the traceback in the rule's log file only; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message names the culprit (file, question id or config key)."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (continuation lines joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__
