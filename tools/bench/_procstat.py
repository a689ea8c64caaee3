"""What a process costs, read from /proc and the kernel's TCP counters: shared by the issue-13 benchmarks.

- CPU: user+system seconds (psutil); wake-ups: voluntary + involuntary context switches summed over every
  thread in /proc/PID/task (a thread that sleeps and is woken counts one switch per wake-up);
- memory: VmRSS and PSS (/proc/PID/smaps_rollup via psutil);
- bytes on the wire: `ss -tin` per TCP connection (bytes_sent/bytes_received and segments both ways), with
  TCP+IP headers counted as 52 bytes a segment (IPv4 20 + TCP 20 + the timestamps option 12, as Linux sends
  them on loopback and on cellular links alike). TLS is not in these figures: it adds ~29 B a record with
  AES-GCM (5 B header, 8 B explicit nonce, 16 B tag) plus handshakes.
Not a benchmark itself (no main(); the leading underscore keeps `python -m tools.bench` from running it).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

HEADER_BYTES = 52


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    switches: int
    rss_mib: float
    pss_mib: float


def sample(pid: int) -> ProcSample:
    p = psutil.Process(pid)
    cpu = p.cpu_times()
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.endswith("ctxt_switches") or "ctxt_switches:" in line:
                    switches += int(line.split()[1])
        except (OSError, ValueError):
            continue
    mem = p.memory_full_info()
    return ProcSample(cpu.user + cpu.system, switches, mem.rss / 2**20, mem.pss / 2**20)


def rss_by_mapping(pid: int) -> dict[str, int]:
    """Resident KiB per mapping name from /proc/PID/smaps: a library's base name, [heap], [stack], or [anon]
    (pymalloc's arenas, thread stacks and large mallocs are all anonymous)."""
    out: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = re.match(r"[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if m:
            name = Path(m.group(1)).name if m.group(1).startswith("/") else (m.group(1) or "[anon]")
        elif line.startswith("Rss:"):
            out[name] = out.get(name, 0) + int(line.split()[1])
    return out


@dataclass(frozen=True)
class TcpCount:
    bytes_out: int
    bytes_in: int
    segs_out: int
    segs_in: int

    @property
    def wire_bytes(self) -> int:
        return self.bytes_out + self.bytes_in + HEADER_BYTES * (self.segs_out + self.segs_in)

    def minus(self, o: TcpCount) -> TcpCount:
        return TcpCount(self.bytes_out - o.bytes_out, self.bytes_in - o.bytes_in, self.segs_out - o.segs_out,
                        self.segs_in - o.segs_in)


def _field(text: str, name: str) -> int:
    m = re.search(rf"\b{name}:(\d+)", text)
    return int(m.group(1)) if m else 0


def tcp_to(port: int) -> TcpCount:
    """Counters of the client side of every established connection to 127.0.0.1:port, summed."""
    out = subprocess.run(["ss", "-tinH", "state", "established", "dport", "=", f":{port}"],
                         capture_output=True, text=True, check=True).stdout
    total = TcpCount(0, 0, 0, 0)
    for info in out.split("\n\t")[1:] if "\n\t" in out else []:
        total = TcpCount(total.bytes_out + _field(info, "bytes_sent"), total.bytes_in + _field(info, "bytes_received"),
                         total.segs_out + _field(info, "segs_out"), total.segs_in + _field(info, "segs_in"))
    return total
