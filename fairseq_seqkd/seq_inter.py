"""PLACEHOLDER (issue 4 fills it): Seq-Inter options and the build_generator hook."""

from dataclasses import dataclass


@dataclass
class SeqInterConfig:
    pass


class SeqInterMixin:
    pass
