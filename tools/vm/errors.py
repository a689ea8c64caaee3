"""Exceptions raised by the VM harness."""

from __future__ import annotations


class VmError(RuntimeError):
    """The guest could not be prepared, booted or did not report a result.

    `console` carries the tail of the guest's serial console, which is where the
    kernel and the guest /init report what went wrong.
    """

    def __init__(self, message: str, *, console: str = "", output: str = "") -> None:
        if console:
            message = f"{message}\n--- guest console (tail) ---\n{console}"
        super().__init__(message)
        self.console = console
        self.output = output


class VmTimeout(VmError):
    """The guest did not power off within the timeout; `output` holds what the command printed so far."""
