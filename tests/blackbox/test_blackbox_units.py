"""Pure parts of the black box, from tables and a FakeClock: /proc parsers, the ring's bounds and rate limits,
the columnar snapshot at the default 30 s / 10 s, triggers and their per-family rate limit."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgpack
import pytest

from agent.blackbox import sysread
from agent.blackbox.columns import columnar, expand
from agent.blackbox.recorder import PARSE_EVERY, BlackBox
from agent.blackbox.ring import ContextRing
from agent.blackbox.settings import BlackboxConfig
from agent.clock import FakeClock
from agent.config import from_mapping
from agent.errors import ConfigError
from agent.records import Kind, Record, RecordFactory
from agent.wire import BatchId, decode, encode_batch

STAT = """cpu  100 0 100 700 100 0 0 0 0 0
cpu0 50 0 50 350 50 0 0 0 0 0
cpu1 50 0 50 350 50 0 0 0 0 0
intr 1 2 3
"""
STAT2 = """cpu  300 0 100 800 200 0 0 0 0 0
cpu0 240 0 50 360 50 0 0 0 0 0
cpu1 60 0 50 440 150 0 0 0 0 0
"""


def test_proc_parsers() -> None:
    a, b = sysread.parse_stat(STAT), sysread.parse_stat(STAT2)
    assert a["cpu"] == (1000, 800, 100)
    total, per, iow = sysread.cpu_pct(a, b)
    assert (total, iow) == (50.0, 25.0)
    assert per == [95.0, 5.0]
    assert sysread.parse_meminfo("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 250 kB\n") == (75.0, 250 / 1024)
    assert sysread.parse_meminfo("garbage") == (None, None)
    assert sysread.parse_loadavg("0.52 0.40 0.30 2/300 1234\n") == 0.52
    assert sysread.parse_pid_stat("42 (my (odd) proc) R 1 2 3 4 5 6 7 8 9 10 120 30 0") == ("my (odd) proc", 150)
    assert sysread.parse_pid_stat("42 broken") is None
    top = sysread.top_cpu({1: 0, 2: 0, 3: 5}, {1: ("a", 10), 2: ("b", 200), 3: ("c", 5), 4: ("new", 999)},
                          2.0, 2)
    # A pid the earlier scan did not see started since: all its ticks are in the interval.
    assert [t[0] for t in top] == ["new", "b"] and top[0][1] == round(100.0 * 999 / sysread.CLK_TCK / 2.0, 1)


MEMINFO = [
    ("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 250 kB\n", (75.0, 250 / 1024)),
    ("MemAvailable:  250 kB\nMemTotal:   1000 kB", (75.0, 250 / 1024)),     # any order, no final newline
    ("MemTotal: 1000 kB\nMemFree: 10 kB\n", (None, None)),                 # a kernel before MemAvailable
    ("MemTotal: 0 kB\nMemAvailable: 0 kB\n", (None, None)),
    ("MemTotal: lots\nMemAvailable: 250 kB\n", (None, None)),
    ("XMemTotal: 1000 kB\nMemAvailable: 250 kB\n", (None, None)),          # a name is matched whole
    ("MemTotal:\nMemAvailable: 250 kB\n", (None, None)),
    ("", (None, None)),
]


@pytest.mark.parametrize(("text", "expected"), MEMINFO)
def test_meminfo_table(text: str, expected: tuple[float | None, float | None]) -> None:
    assert sysread.parse_meminfo(text) == expected


def test_stat_stops_before_the_interrupt_counters() -> None:
    assert sysread.parse_stat("cpu  1 0 1 8 0 0 0 0\nintr 5 " + "1 " * 5000 + "\ncpu9 9 9 9 9 9 9 9 9\n") == \
        {"cpu": (10, 8, 0)}  # what follows `intr` is not a cpu line, however it is named


def test_kept_files_read_fresh_and_close(tmp_path: Path) -> None:
    import os
    f = tmp_path / "stat"
    f.write_text("one")
    kept = sysread.KeptFiles()
    before = len(os.listdir("/proc/self/fd"))
    assert kept.read(str(f)) == "one"
    f.write_text("two, longer")                 # rewritten in place: the same descriptor reads it afresh
    assert kept.read(str(f)) == "two, longer"
    assert len(os.listdir("/proc/self/fd")) == before + 1
    with pytest.raises(FileNotFoundError):
        kept.read(str(tmp_path / "gone"))
    kept.close()
    assert len(os.listdir("/proc/self/fd")) == before
    r = sysread.SystemReader()
    r.sample()
    r.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_stop_closes_what_the_system_reader_keeps_open() -> None:
    class Reader(sysread.SystemReader):
        closed = 0

        def close(self) -> None:
            type(self).closed += 1
            super().close()
    box = BlackBox(from_mapping({"vehicle": {"id": "V", "device": "d", "fleet": "f"}}).blackbox, FakeClock(),
                   lambda r: None, system=Reader())
    box.start()
    box.stop()
    box.stop()                                  # a second stop is harmless
    assert Reader.closed == 2 and box._thread is not None and not box._thread.is_alive()


def _fake_proc(turns: list[tuple[str, str]]) -> sysread.SystemReader:
    """A reader whose /proc/stat gives the next of `turns` (cpu line, cpu0 line) at each read."""
    it = iter(turns)

    def read(path: str) -> str:
        if path.endswith("/stat"):
            cpu, cpu0 = next(it)
            return f"cpu  {cpu}\ncpu0 {cpu0}\nintr 9 9 9\nctxt 1\n"
        return {"meminfo": "MemTotal: 1000 kB\nMemAvailable: 600 kB\n", "loadavg": "0.25 0.1 0.1 1/90 7\n"}[
            path.rsplit("/", 1)[1]]
    return sysread.SystemReader(read=read, temperatures=False)


TURNS = [("10 0 10 80 0 0 0 0", "10 0 10 80 0 0 0 0"), ("40 0 20 130 10 0 0 0", "40 0 20 130 10 0 0 0"),
         ("40 0 20 230 10 0 0 0", "40 0 20 230 10 0 0 0")]


def test_taken_then_parsed_in_a_batch_equals_sampled_each_turn() -> None:
    """The black box reads each turn and parses ten turns at once (issue 13): the samples are the same."""
    each = _fake_proc(TURNS)
    one_by_one = [each.sample() for _ in TURNS]
    batch = _fake_proc(TURNS)
    raws, cpus = [], []
    for _ in TURNS:
        raws.append(batch.take())
        cpus.append(batch.cpu)
    assert [batch.parse(r) for r in raws] == one_by_one
    assert one_by_one[1] == {"cpu": 40, "cpu0": 40, "iowait": 10.0, "mem": 40.0, "avail_mib": 1, "load1": 0.25}
    assert "intr" not in raws[0][0]
    assert cpus == [None, 40.0, 0.0]  # the turn's own figure, from the first line, for the process-table cadence


def test_the_load_average_is_read_once_per_kernel_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel recomputes /proc/loadavg every 5 s: turns in between carry the text read last."""
    r = _fake_proc(TURNS * 3)
    reads: list[str] = []
    inner = r.read
    assert inner is not None
    r.read = lambda path: reads.append(path) or inner(path)
    now = [100.0]
    monkeypatch.setattr(sysread.time, "monotonic", lambda: now[0])
    for _ in range(7):
        r.take()
        now[0] += 1.0
    assert sum(p.endswith("loadavg") for p in reads) == 2 and sum(p.endswith("/stat") for p in reads) == 7


def test_the_ring_gets_the_readings_every_tenth_turn_and_before_a_snapshot() -> None:
    clock = FakeClock()
    out: list[Record] = []
    box = _box(BlackboxConfig(pre_s=5, post_s=2), clock, out, [5.0])
    systems = lambda: box.ring.stats()["samples"].get("system", 0)  # noqa: E731
    for _ in range(PARSE_EVERY - 1):
        box.step()
        clock.advance(1.0)
    assert systems() == 0
    box.step()
    assert systems() == PARSE_EVERY
    clock.advance(1.0)
    box.observe([RecordFactory(clock).begin("display.freeze", {"cause": "hmi_stopped"})])
    for _ in range(3):
        box.step()
        clock.advance(1.0)
    assert len(out) == 1 and systems() == PARSE_EVERY + 3  # the snapshot at T + 2 s parsed the backlog first
    d = out[0].data
    assert isinstance(d, dict) and len(d["system"]["t"]) == 8  # T - 5 .. T + 2, the last three from the backlog
    box.step()
    box.stop()
    assert systems() == PARSE_EVERY + 4  # stop parses what is left


def test_real_proc_reader_samples_this_machine() -> None:
    r = sysread.SystemReader()
    r.sample()
    time.sleep(0.2)  # CPU counters advance in clock ticks (10 ms): give them some
    s = r.sample()
    assert {"cpu", "cpu0", "mem", "avail_mib", "load1", "iowait"} <= set(s)
    scan = sysread.ProcessScanner()
    assert scan.scan(0.0, 3) is None
    assert isinstance(scan.scan(1.0, 3), list)


def test_ring_bounds_and_rate_limits() -> None:
    ring = ContextRing(10.0, 1 << 20, kmsg_per_s=2.0, kmsg_burst=3, kmsg_max_chars=20)
    for i in range(40):
        ring.add("system", i * 0.5, {"cpu": i})
    got = ring.window(0, 100, ["system"])["system"]
    # One sample per 0.9 s kept (the others coalesced), and only the last 10 s.
    assert [round(t, 1) for t, _ in got] == [float(s) for s in range(9, 20)]
    assert ring.counters.get("coalesced.system") == 20
    for _ in range(10):  # a storm at one instant: the burst passes, the rest is counted
        ring.add("kmsg", 20.0, {"lvl": 3, "msg": "x" * 100})
    ring.add("kmsg", 21.0, {"lvl": 6, "msg": "after"})
    lines = ring.window(0, 100, ["kmsg"])["kmsg"]
    assert len(lines) == 4 and len(lines[0][1]["msg"]) == 20
    assert lines[-1][1] == {"lvl": 6, "msg": "after", "skipped": 7}
    small = ContextRing(1000.0, 4096)
    for i in range(200):
        small.add("kmsg", float(i), {"lvl": 4, "msg": "y" * 100})
    assert small.bytes <= 4096 and small.counters.get("evicted_bytes_bound") > 0


class _CountingSample(Mapping[str, object]):
    """A sample that counts how often it is read: copying it reads every key."""

    def __init__(self, **fields: object) -> None:
        self.fields, self.reads = fields, 0

    def __getitem__(self, k: str) -> object:
        self.reads += 1
        return self.fields[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)


def test_ring_copies_only_the_samples_it_keeps() -> None:
    ring = ContextRing(10.0, 1 << 20, kmsg_per_s=1.0, kmsg_burst=1)
    kept, dropped = _CountingSample(age=1.0), _CountingSample(age=2.0)
    assert ring.add("display", 0.0, kept) and not ring.add("display", 0.1, dropped)
    assert kept.reads == 1 and dropped.reads == 0
    kept.fields["age"] = 9.0  # the ring holds its own copy: the caller may reuse its dict
    assert ring.window(0, 1, ["display"])["display"] == [(0.0, {"age": 1.0})]
    line, storm = _CountingSample(msg="a"), _CountingSample(msg="b")
    assert ring.add("kmsg", 0.0, line) and not ring.add("kmsg", 0.0, storm)
    assert line.reads > 0 and storm.reads == 0


def _box(cfg: BlackboxConfig, clock: FakeClock, out: list[Record], cpu: list[float]) -> BlackBox:
    class Sys:
        cpu: float | None = None

        def take(self) -> dict[str, object]:  # what the step read, already parsed
            self.cpu = v = cpu[0]
            return {"cpu": v, "cpu0": v, "cpu1": v, "mem": 41.5, "avail_mib": 1800, "load1": 0.3, "iowait": 0.0}

        def parse(self, raw: dict[str, object]) -> dict[str, object]:
            return raw

    class Procs:
        def scan(self, now: float, n: int) -> list[list[object]]:
            return [["hmi", cpu[0]], ["icvq-agent", 0.5]]

    return BlackBox(cfg, clock, out.append, system=Sys(), scanner=Procs())  # type: ignore[arg-type]


def test_snapshot_at_defaults_covers_30s_before_and_10s_after_with_the_spike() -> None:
    cfg = BlackboxConfig()
    clock = FakeClock()
    out: list[Record] = []
    cpu = [5.0]
    box = _box(cfg, clock, out, cpu)
    rec = RecordFactory(clock)
    begin = None
    for second in range(80):
        cpu[0] = 97.0 if second == 40 else 5.0  # the spike: 20 s before the freeze starts (second 60)
        box.step()
        box.tap("link", {"rsrp": -95, "tech": "lte", "datapath": 1})
        box.tap("display", {"frame_age_s": max(0, second - 60), "freeze": int(second >= 63)})
        box.tap("kmsg", {"lvl": 6, "msg": f"line {second}"})
        if second == 63:  # the probe confirms the freeze 3 s after it began
            begin = rec.begin("display.freeze", {"cause": "hmi_stopped", "detected_after_s": 3.0})
            box.observe([begin])
        clock.advance(1.0)
    assert begin is not None and len(out) == 1
    snap = out[0]
    assert snap.kind is Kind.SNAPSHOT and snap.name == "blackbox.snapshot" and snap.episode == begin.episode
    assert snap.mono_ms == begin.mono_ms - 3000  # stamped at the onset
    d = snap.data
    assert isinstance(d, dict)
    sys_t, sys_cpu = d["system"]["t"], d["system"]["cpu"]
    assert sys_t[0] == 0 and sys_t[-1] == 40_000 and len(sys_t) == 41  # T-30 .. T+10 at 1 Hz
    assert d["pre_s"] == 30.0 and d["post_s"] == 10.0 and d["complete"] is True
    spike_t = [t for t, v in zip(sys_t, sys_cpu, strict=True) if v > 90]
    assert spike_t == [10_000]  # 20 s before the onset
    assert expand(d["procs"]["top"])[d["procs"]["t"].index(10_000)][0] == ["hmi", 97.0]
    assert {"system", "procs", "kmsg", "link", "display"} <= set(d)
    size = len(msgpack.packb(d))
    assert size <= 8 * 1024, size
    # It survives the wire: encoded in a batch, strictly decoded, the nested columns come back equal.
    payload = encode_batch(BatchId("V", "hu", 1, snap.boot, 1), [snap])
    back = decode(payload)
    assert back.records[0].data == d and back.records[0].kind is Kind.SNAPSHOT  # type: ignore[union-attr]


def test_family_rate_limit_counts_suppressed_and_storm_stays_under_cap() -> None:
    cfg = BlackboxConfig(pre_s=5, post_s=2, window_s=10, kmsg_per_s=1000, kmsg_burst=10000, kmsg_max_chars=1024)
    clock = FakeClock()
    out: list[Record] = []
    box = _box(cfg, clock, out, [10.0])
    rec = RecordFactory(clock)
    for i in range(3):
        box.step()
        for j in range(100):
            box.tap("kmsg", {"lvl": 3, "msg": f"storm {i}.{j} " + "z" * 300})
        box.observe([rec.begin("link.loss", {"start": clock.wall()})])
        box.observe([rec.event("display.gpu_hang", {"driver": "i915"})])  # no built-in event trigger
        clock.advance(1.0)
    for _ in range(4):
        box.step()
        clock.advance(1.0)
    assert len(out) == 1
    assert box.counters.get("suppressed.family:link") == 2
    d = out[0].data
    assert isinstance(d, dict)
    assert len(msgpack.packb(d)) <= 8 * 1024 and d["truncated"][0].startswith("kmsg:")


@pytest.mark.parametrize("table, key", [
    ({"pre_s": 50.0, "post_s": 20.0}, "blackbox.pre_s"),
    ({"capture": ["system", "gps"]}, "blackbox.capture[1]"),
    ({"typo": 1}, "blackbox.typo"),
    ({"max_kib": "big"}, "blackbox.max_kib"),
])
def test_config_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping({"vehicle": {"id": "v", "device": "d", "fleet": "f"}, "blackbox": table})
    assert e.value.key == key


def test_can_statistics_of_several_buses_share_one_channel() -> None:
    clock = FakeClock()
    out: list[Record] = []
    box = _box(BlackboxConfig(), clock, out, [1.0])
    rec = RecordFactory(clock)
    for _ in range(3):
        box.observe([rec.metric("can.bus", {"bus": b, "state": "active", "load_pct": 31.5, "err_frames": 0,
                                            "frames_s": 900.0, "drops": 0}) for b in ("can0", "can1")])
        clock.advance(1.0)
    can = box.ring.window(0, 1e9, ["can"])["can"]
    assert [d["bus"] for _, d in can] == ["can0", "can1"] * 3


def test_columns_compact_whole_floats_and_repeated_strings() -> None:
    samples = [(10.0 + i, {"bus": f"can{i % 2}", "state": "active", "load": 30.0 + i, "x": 1.5}) for i in range(6)]
    cols = columnar(samples, 10.0, group="bus")
    assert cols["t"] == [0, 2000, 4000, 1000, 3000, 5000]                 # grouped by bus, then time
    assert cols["bus"] == {"rle": ["can0", 3, "can1", 3]} and cols["state"] == {"rle": ["active", 6]}
    assert cols["load"] == [30, 32, 34, 31, 33, 35] and all(type(v) is int for v in cols["load"])
    assert cols["x"] == [1.5] * 6                                           # numbers stay plain lists
    assert expand(cols["bus"]) == ["can0"] * 3 + ["can1"] * 3 and expand([1, 2]) == [1, 2]


def test_hourly_cap_over_all_triggers() -> None:
    from agent.blackbox.triggers import Trigger

    clock = FakeClock()
    out: list[Record] = []
    box = _box(BlackboxConfig(max_per_hour=3, pre_s=1, post_s=0, window_s=5), clock, out, [1.0])
    box.set_campaign_triggers([Trigger("campaign:c", ("can.error",), frozenset({Kind.EVENT}), ("system",), 1, 0, 0.0,
                                       campaign="c")])
    rec = RecordFactory(clock)
    for _ in range(10):
        box.observe([rec.event("can.error", {"bus": "can0", "frames": 3})])
        clock.advance(60.0)
        box.step()
    assert len(out) == 3 and box.counters.get("suppressed.hourly_cap") == 7
    clock.advance(3600.0)
    box.observe([rec.event("can.error", {"bus": "can0", "frames": 3})])
    box.step()
    assert len(out) == 4


def test_events_may_name_a_whole_family() -> None:
    clock = FakeClock()
    out: list[Record] = []
    box = _box(BlackboxConfig(events=("display",), families=(), pre_s=1, post_s=0, window_s=5), clock, out, [1.0])
    rec = RecordFactory(clock)
    box.observe([rec.event("display.gpu_hang", {"driver": "i915"}), rec.event("can.error", {"bus": "can0"})])
    box.step()
    assert [r.data["trigger"] for r in out if isinstance(r.data, dict)] == ["display.gpu_hang"]


def test_process_table_is_scanned_slowly_while_idle_at_once_when_busy_or_triggered() -> None:
    clock = FakeClock()
    out: list[Record] = []
    cpu = [5.0]
    box = _box(BlackboxConfig(), clock, out, cpu)
    scans: list[int] = []
    scan = box.scanner.scan
    box.scanner.scan = lambda now, n: scans.append(round(now - 1000)) or scan(now, n)  # type: ignore[method-assign]
    rec = RecordFactory(clock)
    for second in range(200):
        cpu[0] = 80.0 if 40 <= second < 52 else 5.0
        box.step()
        if second == 75:
            box.observe([rec.begin("display.freeze", {"cause": "hmi_stopped"})])
        clock.advance(1.0)
    # idle: every 120 s; busy from 40: at once, then every 5 s; a trigger: next turn; idle: 120 s after the last
    assert scans == [0, 40, 45, 50, 76, 196], scans


def test_busy_process_scans_keep_their_cadence_when_turns_wake_late_or_early() -> None:
    clock = FakeClock()
    box = _box(BlackboxConfig(interval_s=0.5, procs_interval_s=0.5), clock, [], [90.0])
    scans: list[float] = []
    scan = box.scanner.scan
    box.scanner.scan = lambda now, n: scans.append(now) or scan(now, n)  # type: ignore[method-assign]
    for jitter in (0.0, 0.004, -0.003, 0.006, 0.0, -0.002):  # ms-scale wake-up jitter around a 0.5 s cadence
        clock.advance(0.5 + jitter)
        box.step()
    assert len(scans) == 6

