"""One exception type for bad user input, so the CLI can print it as one clear line."""

from __future__ import annotations


class InputError(Exception):
    """Bad input data or configuration: the message names the sample, the file and the fault."""

    def __init__(self, message: str, *, sample: str | None = None, path: object = None) -> None:
        parts = []
        if sample is not None:
            parts.append(f"sample {sample!r}")
        if path is not None:
            parts.append(f"file {str(path)!r}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.sample = sample
        self.path = path
