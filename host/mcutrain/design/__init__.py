"""Design-time models of a candidate network on a board: board profiles (profiles.py), the
architecture description (arch.py), RAM (memory.py), flash (flash.py) and instruction/cycle
cost (costs.py, calibrated by calibrate.py), docs/cost-model.md; and the student search
under a board's limits (search.py, `mcutrain design`), docs/design.md.

The search's names are loaded on first use, so that the CLI's parser (which reads the
families and profiles) does not import numpy."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Candidate", "DesignError", "Limits", "SearchResult", "TeacherInfo", "arch_to_spec", "design_student",
           "downscale", "read_teacher", "student_source", "table", "write_student"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # (the function search() is mcutrain.design.search.search: the package attribute is the module)
        return getattr(importlib.import_module(".search", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
