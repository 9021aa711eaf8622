"""PLACEHOLDER (issue 3 fills it): teacher-cache options and the load_dataset hook."""

from dataclasses import dataclass


@dataclass
class TeacherCacheConfig:
    pass


class TeacherCacheMixin:
    pass
