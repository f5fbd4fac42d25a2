"""mcutrain host package: emulated boards, device runners and the `mcutrain` CLI."""

__version__ = "0.1.0"
