"""mcutrain host package: emulated boards, device runners and the `mcutrain` CLI.

The public API (mcutrain.api, docs/host-api.md) is importable from here: `mcutrain.board`,
`mcutrain.Board`, `mcutrain.export_model`, `mcutrain.plot_results`, `mcutrain.read_results`. It loads on
first use, so `import mcutrain` (and the CLI) stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("Board", "Record", "board", "export_model", "plot_results", "read_results")
__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from .api import Board, Record, board, export_model, plot_results, read_results  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mcutrain' has no attribute {name!r}")
