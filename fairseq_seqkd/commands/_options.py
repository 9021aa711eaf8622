"""Command-line options from a config dataclass: one option per field, and the config back from them."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import TypeVar

T = TypeVar("T")


def add_config(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of ``cls``, with the field's default and help (fairseq style); a bool is a switch."""
    for f in fields(cls):
        name = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(name, action="store_true", help=f.metadata["help"])
        else:
            p.add_argument(name, type=type(f.default), default=f.default,
                           help=f"{f.metadata['help']} (default {f.default!r})")


def config_from(args: argparse.Namespace, cls: type[T]) -> T:
    """The ``cls`` config that the options of :func:`add_config` parsed into ``args``."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
