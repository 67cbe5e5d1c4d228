"""One exception type for bad user input, so the CLI can print it as one clear line; and the
one-line warning for suspicious (but usable) input."""

from __future__ import annotations

import sys


def _prefix(sample: str | None, path: object) -> str:
    parts = []
    if sample is not None:
        parts.append(f"sample {sample!r}")
    if path is not None:
        parts.append(f"file {str(path)!r}")
    return ", ".join(parts)


class InputError(Exception):
    """Bad input data or configuration: the message names the sample, the file and the fault."""

    def __init__(self, message: str, *, sample: str | None = None, path: object = None) -> None:
        prefix = _prefix(sample, path)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.sample = sample
        self.path = path


def warn(verb: str, message: str, *, sample: str | None = None, path: object = None) -> str:
    """Print one ``mvfcnn <verb>: warning: ...`` line to stderr (the job log) and return the
    message, so the caller also records it in its summary JSON (``warnings``): suspicious data
    that is only visible as a number in a JSON gets overlooked."""
    prefix = _prefix(sample, path)
    text = f"{prefix}: {message}" if prefix else message
    print(f"mvfcnn {verb}: warning: {text}", file=sys.stderr)
    return text
