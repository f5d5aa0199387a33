"""Key material that never shows up in logs, reprs, tracebacks or error messages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Secret:
    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret(<{len(self.value)} bytes redacted>)"

    __str__ = __repr__

    def hex(self) -> str:
        """The raw hex, only for handing to the kernel (never for display)."""
        return self.value.hex()
