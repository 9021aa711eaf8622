"""PLACEHOLDER (issue 6 fills it): pruning options and the optimizer_step hook."""

from dataclasses import dataclass


@dataclass
class PruningConfig:
    pass


class PruningMixin:
    pass
