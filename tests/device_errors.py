"""Checking that bad input raises clear exceptions on a device, many cases in one script."""

from __future__ import annotations

from mcutrain.runner import run_on

Case = tuple[str, str, str]  # (expression, exception type name, words the message must contain)


def assert_raises_clearly(target, cases: list[Case], setup: list[str], after: str | None = None) -> list[str]:
    """Run every expression after `setup` lines, each in its own try; check its exception type
    and that the message names what went wrong. `after` is an expression printed last, to show
    the board still works; the output lines are returned."""
    lines = list(setup)
    for i, (expr, _, _) in enumerate(cases):
        lines.append(f"""
try:
    {expr}
    print('{i} no-error')
except Exception as e:
    print('{i}', type(e).__name__, repr(str(e)))""")
    if after is not None:
        lines.append(f"print({after})")
    out = run_on(target, "\n".join(lines)).splitlines()
    for i, (expr, exc, words) in enumerate(cases):
        line = next(line for line in out if line.split(" ", 1)[0] == str(i))
        assert line.split()[1] == exc, f"{expr}: {line}"
        assert words in line, f"{expr}: message should mention {words!r}: {line}"
    return out
