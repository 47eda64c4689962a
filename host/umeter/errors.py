"""One error family for the host toolchain; the CLI prints `umeter: error: <what> — <hint>`."""

from __future__ import annotations


class UmeterError(Exception):
    """Base of every expected failure. `hint` says what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(UmeterError):
    """A bad option, inventory, board definition or configuration value."""


class DeviceError(UmeterError):
    """The device answered, but not as it should (wrong board, failed check)."""


class TransportError(UmeterError):
    """The device or broker could not be reached, or the link broke."""


class PolicyError(UmeterError):
    """A policy or firmware bundle is invalid, unsigned or rejected."""
