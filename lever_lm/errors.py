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


def torch_load_reason(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in one short line: for a file holding more than plain
    tensors, the object it refused (torch's own message is a paragraph with terminal escapes)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    refused = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\.\s|$)", text, flags=re.M)
    if refused:
        return f"it holds more than plain tensors ({refused.group(1).strip()}); unpickling that could run code"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
