"""fd 0 = /dev/kmsg hand-off from systemd (StandardInput=file:/dev/kmsg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys
sys.path.insert(0, REPO_PATH)
from agent import inherited
print(inherited.adopt_stdin_kmsg())
fd = inherited.kmsg_fd()
print(fd is not None)
if fd is not None:
    try:
        rec = os.read(fd, 8192)
        print(b";" in rec)
    except BlockingIOError:
        print(True)
    print(inherited.is_kmsg(0))
""".replace("REPO_PATH", repr(str(REPO)))


def test_adopts_kmsg_on_stdin() -> None:
    with open("/dev/kmsg", "rb") as kmsg:
        out = subprocess.run([sys.executable, "-c", SCRIPT], stdin=kmsg, capture_output=True, text=True,
                             check=True).stdout.split()
    assert out == ["True", "True", "True", "False"], "adopted, readable, and fd 0 no longer the kernel log"


def test_ignores_other_stdin() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False"]
