"""The parser every ``mvfcnn <verb>`` command starts from, so each names its verb one way."""

from __future__ import annotations

import argparse


def verb_parser(verb: str, description: str | None) -> argparse.ArgumentParser:
    """The parser of ``mvfcnn <verb>`` (its usage line names the verb as users type it)."""
    return argparse.ArgumentParser(prog=f"mvfcnn {verb}", description=description)
