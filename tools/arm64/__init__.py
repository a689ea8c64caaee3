"""The agent on an emulated arm64 userland: Debian bookworm arm64 root (debootstrap) + qemu-aarch64-static.

`python -m tools.arm64 test` (`make test-arm64`) runs the end-to-end smoke test; see README.md.
"""

from .cache import ArmError
from .rootfs import ensure_rootfs
from .runner import emulator, run_test
from .wheels import ensure_site

__all__ = ["ArmError", "emulator", "ensure_rootfs", "ensure_site", "run_test"]
