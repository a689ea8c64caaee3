"""Run commands in a qemu (TCG) guest with a real kernel: SocketCAN (vcan, can-bcm, can-gw), netem, systemd.

Usage: `run_in_vm(["ip", "-j", "link", "show", "vcan0"])` returns a VmResult (returncode, output).
"""

from .errors import VmError, VmTimeout
from .runner import VmResult, prepare, run_in_vm

__all__ = ["VmError", "VmResult", "VmTimeout", "prepare", "run_in_vm"]
