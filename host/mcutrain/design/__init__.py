"""Design-time models of a candidate network on a board: board profiles (profiles.py), the
architecture description (arch.py), RAM (memory.py), flash (flash.py) and instruction/cycle
cost (costs.py, calibrated by calibrate.py), docs/cost-model.md; and the student search
under a board's limits (search.py, `mcutrain design`), docs/design.md."""

from .search import (
    Candidate,
    DesignError,
    Limits,
    SearchResult,
    TeacherInfo,
    arch_to_spec,
    design_student,
    downscale,
    read_teacher,
    search,
    student_source,
    table,
    write_student,
)

__all__ = ["Candidate", "DesignError", "Limits", "SearchResult", "TeacherInfo", "arch_to_spec", "design_student",
           "downscale", "read_teacher", "search", "student_source", "table", "write_student"]
