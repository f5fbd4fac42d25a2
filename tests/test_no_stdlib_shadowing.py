"""Tests put bench/ and host/ on sys.path; a file there named like a stdlib module (bench/profile.py
once) silently replaces it for every later import in the pytest process (torch imports cProfile,
which imports profile)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_on_the_test_path_shadows_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    for folder in ("bench", "host", "tests", "tools"):
        for path in (ROOT / folder).glob("*.py"):
            assert path.stem not in stdlib, f"{path.relative_to(ROOT)} shadows the stdlib module {path.stem}"
