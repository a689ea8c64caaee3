"""The record catalog: one declarative list of everything the agent can put on the wire — every record name,
its kind(s), its fields, the data category of each field under China's automotive data rules, why it is
collected, and the config switch that turns it off or coarsens it — plus every drop reason counted in
`agent.drops`.

Hand-written on purpose: the inventory is a statement of intent a reviewer (or a regulator) reads, so it must
not be inferred from the code. The code is checked against it instead, three ways:
- tests/spine/test_catalog.py walks the AST of agent/ for every call that emits a record or counts a drop
  and fails on a name, literal field or drop reason missing here;
- `undeclared(record)` checks a live record (name, kind, top-level fields, drop-reason keys); the test-suite
  hook in tests/conftest.py runs it on every record the in-process tests create;
- docs/data-inventory.md is generated from this module (`python -m agent.catalog --write`) and a test keeps
  the committed file equal to the generated one.

Categories follow the 2021 Several Provisions on Automotive Data Security Management (汽车数据安全管理若干
规定(试行)) and GB/T 41871-2022: *vehicle operating data* (technical data about the vehicle and its
software, not about a person), *personal information* (linked or linkable to an identified natural person:
the VIN identifies a registered keeper), *sensitive personal information* (precise location and tracks,
which the Provisions name explicitly). No thread, no I/O: data and pure functions only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .dataclass_shared import dataclass
from .records import Kind, Record

VEHICLE = "vehicle operating data"
PERSONAL = "personal information"
SENSITIVE = "sensitive personal information"
CATEGORIES = (VEHICLE, PERSONAL, SENSITIVE)

E, B, N, M, H, S = Kind.EVENT, Kind.BEGIN, Kind.END, Kind.METRIC, Kind.HEALTH, Kind.SNAPSHOT


@dataclass(frozen=True)
class Field:
    """One top-level field of a record's data map (nested members are named `parent.child`)."""

    name: str
    meaning: str
    category: str = VEHICLE
    switch: str = ""  # a switch for this field alone, when it differs from the record's


@dataclass(frozen=True)
class RecordDef:
    name: str
    kinds: tuple[Kind, ...]
    source: str            # the module that emits it
    purpose: str           # why it is collected (purpose limitation)
    switch: str            # the config key that turns it off
    fields: tuple[Field, ...] = ()
    value: str = ""        # a metric/health record whose data is one number: what the number is
    open_fields: str = ""  # the data map has keys named at run time: what they are (checked where possible)

    @property
    def category(self) -> str:
        """The most sensitive category of any of its fields."""
        cats = [f.category for f in self.fields] or [VEHICLE]
        return max(cats, key=CATEGORIES.index)

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class DropReason:
    reason: str            # exact key in `agent.drops`, or a prefix ending in ".<code>" for a family
    meaning: str

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.reason).replace(re.escape("<code>"), r"0x[0-9a-f]+") + r"\Z")


@dataclass(frozen=True)
class WireItem:
    """Something on the wire that is not a record: batch identity, topic segments, the birth message."""

    name: str
    where: str
    meaning: str
    category: str
    switch: str


def F(name: str, meaning: str, category: str = VEHICLE, switch: str = "") -> Field:
    return Field(name, meaning, category, switch)


# ------------------------------------------------------------------------------------------- switches
SYS, DISP, LINK, CAN = "probes.system.enabled", "probes.display.enabled", "probes.link.enabled", \
    "probes.can.enabled"
ALWAYS = "always on (the agent's own health: needed to prove nothing was lost)"
POSITION = "probes.link.position_grid_m (coarsens), probes.link.send_position = false (removes)"

_BUS = F("bus", "CAN interface name")
_SENSOR = (F("bus", "CAN interface name"), F("sensor", "configured sensor name"), F("id", "CAN id (hex)"))
_ENDED = F("ended_by", "recovered / agent_stop")
_DUR = F("duration_s", "episode length, s")


def _position(prefix: str, when: str) -> tuple[Field, ...]:
    return (
        F(prefix, f"last GNSS fix {when} (empty without GNSS)", SENSITIVE, POSITION),
        F(f"{prefix}.lat", "latitude: centre of the grid cell (500 m: ≤ 354 m off)", SENSITIVE, POSITION),
        F(f"{prefix}.lon", "longitude: centre of the grid cell", SENSITIVE, POSITION),
        F(f"{prefix}.alt_m", "altitude, rounded to 10 m", SENSITIVE, POSITION),
        F(f"{prefix}.speed_kmh", "speed at that fix, rounded to 10 km/h", PERSONAL, POSITION),
        F(f"{prefix}.age_s", "how old the fix was", VEHICLE, POSITION),
    )


_DISPLAY_EPISODE = (
    F("cause", "most specific explanation the evidence supports"), F("start", "wall s, back-dated"),
    F("evidence", "list of {signal, kind, for_s, ...detail}: region names, process names and pids, "
                  "backlight and connector readings"),
    F("signals", "which signals agreed"), F("explanation", "human-readable cause"),
    F("detected_after_s", "BEGIN: how late the rule fired"), F("end", "END: wall s"), _DUR, _ENDED,
    F("causes", "END: every cause seen during the episode"),
)
_CAN_TIMEOUT = (*_SENSOR, F("cycle_ms", "configured cycle"), F("timeout_ms", "configured timeout"),
                F("silent_s", "since the last frame"), F("never_seen", "no frame since start"), _DUR,
                F("missed_cycles", "cycles missed"), _ENDED)
_CAN_BUS_STATE = (_BUS, F("source", "error_frame / ip_link"), F("from", "state before"), F("to", "state after"),
                  F("tec", "transmit error counter"), F("rec", "receive error counter"), _DUR, _ENDED)
_LINK_LOSS = (
    F("start", "wall s, back-dated to the first evidence of the loss"),
    F("start_evidence", "what the start was back-dated to: modem_down / signal_lost / gnss_lost / first_bad_sample"),
    F("detect_delay_s", "BEGIN: detection delay"),
    F("lost", "which of registered/attached/datapath went"), *_position("entry", "before the loss"),
    F("gnss_fix", "BEGIN: fix at detection"), F("trend", "signal trend before the loss (dB figures)"),
    F("tech", "radio access technology"), F("cause", "tunnel / coverage / terminal / network / unknown"),
    F("setting", "tunnel / coverage / none"), _DUR, F("signal_lost", "the radio signal went"),
    *_position("exit", "at the end"), F("gnss", "fix ratio and GNSS lost/back times, s from start"),
    F("recovery", "seconds from signal back to registered/attached/data path/first ack"),
    F("iface_down", "the modem interface went down"), F("evidence", "terminal-defect evidence"), _ENDED,
)

RECORDS: tuple[RecordDef, ...] = (
    # -- the agent itself -----------------------------------------------------------------------------
    RecordDef("agent.start", (E,), "agent/daemon.py", "restarts and unclean shutdowns explain gaps", ALWAYS, (
        F("version", "agent version"), F("config", "config digest"),
        F("previous_shutdown", "clean / unclean / first / unknown (spool not openable at start)"),
        F("spool_records", "records waiting at start"),
        F("spool_batches", "batches waiting at start"))),
    RecordDef("agent.stop", (E,), "agent/daemon.py", "an orderly stop is not a crash", ALWAYS,
              (F("version", "agent version"),)),
    RecordDef("agent.spool", (H,), "agent/pipeline.py", "proves the spool bounds hold", ALWAYS, (
        F("records", "records waiting"), F("batches", "sealed batches waiting"), F("bytes", "spool size"),
        F("disk_bytes", "what the spool's files occupy on disk (db, WAL, -shm, reserve)"),
        F("memory_records", "records held in memory while the disk fails"),
        F("degraded", "the disk is not writable"),
        F("trouble", "disk_full / read_only / unopenable / io_error / low_headroom, or nil"),
        F("trouble_since", "Unix time the trouble began"))),
    RecordDef("agent.uplink", (H,), "agent/pipeline.py", "delivery health", ALWAYS, (
        F("connected", "MQTT session up"), F("reconnects", "since start"), F("published", "batches published"),
        F("intake_overflow", "records refused by the full intake queue"))),
    RecordDef("agent.drops", (H,), "agent/pipeline.py", "nothing is lost without being counted", ALWAYS,
              open_fields="one key per drop reason (table below), cumulative counts"),
    RecordDef("agent.probe", (H,), "agent/daemon.py", "a hung or failing probe is visible", ALWAYS,
              (F("probe", "probe name"), F("state", "ok / degraded / error / starting")),
              open_fields="the probe's counters (malformed input, errors, ...), named in each probe's doc"),
    RecordDef("agent.health", (H,), "agent/daemon.py", "the agent's own health verdict (agent/health.py), as "
              "`icvq status` shows it", ALWAYS, (F("verdict", "healthy / degraded / failing"),
                                                  F("reasons", "reason codes, worst first (docs/field-guide.md)"))),
    RecordDef("agent.cpu_pct", (M,), "agent/probes/system/__init__.py", "the agent's own footprint", SYS,
              value="CPU % of one core"),
    RecordDef("agent.rss_mib", (M,), "agent/probes/system/__init__.py", "the agent's own footprint", SYS,
              value="resident memory, MiB"),
    RecordDef("agent.blackbox", (H,), "agent/blackbox/recorder.py", "the black box's own bounds and limits",
              "blackbox.enabled", (
                  F("ring_bytes", "ring buffer size (estimate of its objects)"), F("snapshots", "sent since start"),
                  F("suppressed", "snapshots refused by the per-family/campaign rate limits"),
                  F("kmsg_suppressed", "kernel lines over the ring's rate limit"),
                  F("errors", "failed sampling turns"))),
    # -- black box ------------------------------------------------------------------------------------
    RecordDef("blackbox.snapshot", (S,), "agent/blackbox/recorder.py",
              "what the unit was doing in the seconds around an episode (CPU, memory, kernel log, radio, CAN, "
              "screen); campaigns choose among these channels only", "blackbox.enabled (channels: blackbox.capture)",
              (F("trigger", "triggering record name"), F("trigger_kind", "begin / event / end"),
               F("family", "trigger's family"), F("base_ms", "Unix ms of T - pre_s: the columns' time base"),
               F("pre_s", "seconds before T"), F("post_s", "seconds after T"),
               F("complete", "false when the agent stopped inside the post window"),
               F("campaigns", "campaign ids that asked for it"), F("truncated", "channels or lines shed for size"),
               F("trigger_fields", "an event trigger's scalar fields"),
               F("system", "columns: CPU % total and per core, I/O wait, memory, load, thermal zones"),
               F("procs", "columns: top processes by CPU (command name, % of a core)", switch="blackbox.top_procs = 0"),
               F("kmsg", "columns: kernel log level and line (rate-limited, cut to kmsg_max_chars)"),
               F("link", "columns: radio signal, technology, registration, data path (never a position)"),
               F("can", "columns: bus state, load, error frames, drops"),
               F("display", "columns: picture age, freeze/black open, heartbeat age"))),
    # -- system ---------------------------------------------------------------------------------------
    *(RecordDef(n, (M,), "agent/probes/system/__init__.py", "system load behind freezes and lag", SYS, value=v)
      for n, v in (("system.cpu_pct", "CPU %"), ("system.load1", "1-min load"), ("system.load5", "5-min load"),
                   ("system.mem_used_pct", "memory used %"), ("system.mem_available_mib", "MiB"),
                   ("system.procs", "process count"), ("system.disk_used_pct", "spool filesystem used %"),
                   ("system.disk_free_mib", "spool filesystem free MiB"))),
    RecordDef("system.temp_c", (M,), "agent/probes/system/__init__.py", "thermal throttling explains lag",
              "probes.system.temperatures", (F("sensor", "chip.label"), F("v", "°C"))),
    # -- display --------------------------------------------------------------------------------------
    RecordDef("display.freeze", (B, N), "agent/probes/display/probe.py", "screen freezes (quality defect)", DISP,
              _DISPLAY_EPISODE),
    RecordDef("display.black", (B, N), "agent/probes/display/probe.py", "black screens (quality defect)", DISP,
              _DISPLAY_EPISODE),
    RecordDef("display.gpu_hang", (E,), "agent/probes/display/probe.py", "GPU hangs explain freezes",
              "probes.display.kmsg_path = \"\"", (
                  F("driver", "kernel driver"), F("pattern", "matched pattern"), F("line", "kernel log line"),
                  F("device", "GPU device"), F("kernel_s", "kernel timestamp"), F("seq", "kmsg sequence"),
                  F("level", "log level"), F("repeats_before", "folded repeats"))),
    RecordDef("display.hmi_unresponsive", (E,), "agent/probes/display/probe.py",
              "HMI crashes and hangs explain freezes", "probes.display.hmi_processes = [] and heartbeat_socket = \"\"",
              (F("reason", "process state or heartbeat_missing"), F("process", "HMI process name"),
               F("pid", "process id"), F("state", "process state"), F("cpu_pct", "process CPU %"),
               F("for_s", "how long so far"), F("last_frame", "last heartbeat frame counter"))),
    RecordDef("display.backlight_fault", (E,), "agent/probes/display/probe.py", "dark screens with a live HMI",
              "probes.display.backlight = \"\"", (
                  F("reason", "backlight_off / backlight_fault"), F("device", "backlight device"),
                  F("bl_power", "sysfs bl_power"), F("brightness", "set brightness"),
                  F("actual_brightness", "actual brightness"), F("max_brightness", "maximum"),
                  F("for_s", "how long so far"), F("black_episode", "open display.black episode id"))),
    RecordDef("display.changes_per_min", (M,), "agent/probes/display/probe.py", "screen activity baseline", DISP,
              value="framebuffer samples that changed, per minute"),
    RecordDef("display.black_pct", (M,), "agent/probes/display/probe.py", "black-screen baseline", DISP,
              value="% of samples black"),
    RecordDef("display.fps_estimate", (M,), "agent/probes/display/probe.py", "HMI rendering rate", DISP,
              value="frames/s from the HMI heartbeat"),
    RecordDef("display.flips_per_min", (M,), "agent/probes/display/probe.py", "screen activity seen by DRM/KMS",
              "probes.display.drm_card = \"\"", value="page flips (new fb_id on a CRTC) per minute"),
    # -- link -----------------------------------------------------------------------------------------
    RecordDef("link.loss", (B, N), "agent/probes/link/monitor.py",
              "connectivity losses: which tunnel or coverage hole, and whether the terminal recovered", LINK,
              _LINK_LOSS),
    RecordDef("link.recovery_overdue", (E,), "agent/probes/link/monitor.py", "terminal defects while they last",
              LINK, (F("episode", "link.loss episode id"), F("cause", "terminal"),
                     F("evidence", "what did not come back"), F("since_s", "since the loss began"))),
    *(RecordDef(n, (M,), "agent/probes/link/monitor.py", "radio conditions baseline (no position)", LINK,
                value=v)
      for n, v in (("link.rsrp_dbm", "LTE RSRP dBm"), ("link.rsrq_db", "LTE RSRQ dB"),
                   ("link.rssi_dbm", "RSSI dBm"), ("link.snr_db", "LTE SNR dB"), ("link.nr_rsrp_dbm", "NR RSRP dBm"),
                   ("link.nr_rsrq_db", "NR RSRQ dB"), ("link.nr_snr_db", "NR SNR dB"),
                   ("link.rtt_ms", "TCP connect time to datapath.tcp_target"),
                   ("link.connected", "1/0 registered, attached and data path up"))),
    RecordDef("link.registration", (M,), "agent/probes/link/monitor.py", "registration state baseline", LINK, (
        F("state", "3GPP registration state"), F("registered", "bool"), F("attached", "bool"),
        F("tech", "access technology"), F("operator", "network operator name"))),
    RecordDef("link.gnss", (M,), "agent/probes/link/monitor.py", "GNSS availability (no position)", LINK,
              (F("fix", "bool"), F("sats_used", "satellites used"))),
    RecordDef("link.datapath", (M,), "agent/probes/link/monitor.py", "data path availability", LINK,
              (F("up", "bool"), F("reach", "TCP probe reachable"))),
    RecordDef("link.iface", (M,), "agent/probes/link/monitor.py", "modem interface health",
              "probes.link.iface.name = \"\"", tuple(F(k, "interface counter") for k in (
                  "present", "up", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped"))),
    # -- CAN ------------------------------------------------------------------------------------------
    RecordDef("can.timeout", (B, N), "agent/probes/can/monitor.py", "ADAS sensor messages missing", CAN,
              _CAN_TIMEOUT),
    RecordDef("sensor.fault", (B, N), "agent/probes/can/monitor.py", "ADAS sensor-reported faults (blockage, ...)",
              CAN, (*_SENSOR, F("signal", "status signal"), F("value", "physical value"),
                    F("label", "DBC value name"), F("cause", "configured cause"), F("condition", "fault_when"),
                    F("vss", "VSS path"), _DUR, _ENDED)),
    RecordDef("can.counter", (E,), "agent/probes/can/monitor.py", "alive-counter errors", CAN, (
        *_SENSOR, F("window_s", "window"), F("frames", "frames in window"), F("repeats", "repeated counters"),
        F("jumps", "skipped counters"), F("lost", "frames skipped"), F("examples", "at, kind, prev, cur"))),
    RecordDef("can.crc", (E,), "agent/probes/can/monitor.py", "E2E protection failures", CAN, (
        *_SENSOR, F("profile", "E2E profile"), F("window_s", "window"), F("frames", "frames in window"),
        F("failures", "CRC failures"), F("examples", "at, data (hex payload of the sensor frame), received, "
                                                    "computed, counter"))),
    RecordDef("can.error", (E,), "agent/probes/can/bus_monitor.py", "CAN error frames", CAN, (
        _BUS, F("window_s", "window"), F("frames", "error frames"), F("classes", "error classes"),
        F("state", "controller state"))),
    RecordDef("can.bus_off", (B, N), "agent/probes/can/bus_monitor.py", "controller bus-off", CAN, _CAN_BUS_STATE),
    RecordDef("can.error_passive", (B, N), "agent/probes/can/bus_monitor.py", "controller error-passive", CAN,
              _CAN_BUS_STATE),
    RecordDef("can.bus", (M,), "agent/probes/can/bus_monitor.py", "bus load and error baseline", CAN, (
        _BUS, F("state", "controller state"), F("err_frames", "error frames"), F("drops", "socket drops"),
        F("frames_s", "frames/s"), F("load_pct", "bus load %"), F("tec", "transmit error counter"),
        F("rec", "receive error counter"), F("other_frames", "frames of unwatched ids"))),
    RecordDef("can.sensor", (M,), "agent/probes/can/monitor.py", "sensor message timing baseline", CAN, (
        *_SENSOR, F("mode", "raw / bcm"), F("frames", "frames in window (null: not knowable)"),
        F("frames_source", "what frames counts: read (raw) / kernel_bcm (the kernel's BCM count) / unknown"),
        F("missed", "missed cycles"),
        F("bad_length", "frames of wrong length"), F("fd_frames", "FD frames on classic"),
        F("timeouts", "timeouts so far"), F("silent", "timed out now"), F("cycle_ms", "configured cycle"),
        F("changes", "bcm: content changes"), F("period_p50_ms", "median period"),
        F("jitter_p50_ms", "median jitter"), F("jitter_p99_ms", "99th percentile jitter"),
        F("crc_failures", "E2E failures"), F("counter_errors", "alive-counter errors"))),
)

DROPS: tuple[DropReason, ...] = (
    DropReason("spool_full.metric", "the spool's max_mib cap: oldest periodic samples (metrics, health) first"),
    DropReason("spool_full.snapshot", "the spool's max_mib cap, after every periodic sample: oldest black-box "
               "snapshots (and, in spools written before they existed, oldest events)"),
    DropReason("spool_full.event", "the spool's max_mib cap, after every periodic sample is gone: oldest events"),
    DropReason("spool_full.batch_records", "the spool's max_mib cap, after every unsealed record is gone: the "
                                           "records of the oldest sealed batches"),
    DropReason("spool_full.incoming", "one write larger than the whole spool: its oldest records, keeping the "
                                      "newest that fit"),
    DropReason("headroom.metric", "spool.min_free_mib: the file system ran short, the cap shrank; oldest "
                                  "periodic samples first"),
    DropReason("headroom.snapshot", "spool.min_free_mib, after every periodic sample is gone: oldest "
                                    "black-box snapshots"),
    DropReason("headroom.event", "spool.min_free_mib, after every periodic sample and snapshot is gone: "
                                 "oldest events"),
    DropReason("headroom.batch_records", "spool.min_free_mib, after every unsealed record is gone: the records "
                                         "of the oldest sealed batches"),
    DropReason("headroom.incoming", "one write larger than what the headroom leaves: its oldest records"),
    DropReason("memory_full.metric", "disk full or read-only beyond spool.memory_max_records: periodic samples"),
    DropReason("memory_full.event", "disk full or read-only beyond spool.memory_max_records: events"),
    DropReason("memory_full.batch_records", "disk full or read-only beyond spool.memory_max_records, after "
                                            "every unsealed record: the records of the oldest memory batches"),
    DropReason("shutdown.unwritable", "records held in memory at a stop while the spool could not take them "
                                      "(counted before the attempt, taken back for each chunk written)"),
    DropReason("stop_unpersisted.metric", "periodic samples held in memory at a stop that neither the spool "
                                          "(read-only, unopenable) nor the broker could take; kept in the drop "
                                          "ledger (spool.ledger_path) and reported by the next start"),
    DropReason("stop_unpersisted.event", "as stop_unpersisted.metric, for events and black-box snapshots"),
    DropReason("stop_unpersisted.batch_records", "as stop_unpersisted.metric, for the records of batches sealed "
                                                 "in memory and not acknowledged"),
    DropReason("invalid", "a record the strict wire decoder would reject"),
    DropReason("oversize", "one record larger than a batch may be"),
    DropReason("rejected.<code>", "a batch the broker refused with that MQTT 5 reason code (hex) five times"),
    DropReason("spool_corrupt", "records in a database file that failed its check at start and was moved "
                                "aside (kept, not sent); counted exactly from its tables"),
    DropReason("spool_corrupt.estimated", "as spool_corrupt, when the file's tables were unreadable too: "
                                          "estimated from its size at ~110 bytes per record"),
)

WIRE: tuple[WireItem, ...] = (
    WireItem("vehicle", "topic segment, batch identity, status messages, MQTT client id",
             "the VIN or fleet asset id (vehicle.id) — or its keyed pseudonym \"ps-\" + HMAC-SHA256(fleet key, "
             "VIN)[:128 bits], which only the holder of the fleet key and the VIN register can map back", PERSONAL,
             "vehicle.pseudonym_key_file (pseudonym instead of the VIN)"),
    WireItem("device", "topic segment, batch identity", "which computer in the vehicle (hu, adas, ...)",
             VEHICLE, "-"),
    WireItem("boot, sid, seq", "batch identity", "random boot id, spool id, batch sequence (dedup)", VEHICLE,
             "-"),
    WireItem("wall_ms, mono_ms, synced", "every record", "when it happened (with a position: part of a track, "
             "which is why positions appear only on episode BEGIN/END)", VEHICLE, "-"),
    WireItem("birth: agent, config, started, inventory", "status message (retained)",
             "software identity for OTA consistency: versions and SWINs (GB 44496-2024) per component, OS, "
             "kernel", VEHICLE, "agent.components, agent.software (what is reported)"),
    WireItem("birth: inventory.hostname", "status message (retained)", "the unit's host name", VEHICLE, "-"),
    WireItem("birth: transport", "status message (retained)", "tls, plaintext-loopback or plaintext-allowed: "
             "whether the data crossed the network encrypted (docs/security.md)", VEHICLE,
             "uplink.tls.*, uplink.allow_plaintext"),
    WireItem("birth: campaigns; campaign acknowledgements", "status message (retained); .../campaign topic",
             "which backend collection campaigns the unit runs, and why one was refused", VEHICLE,
             "blackbox.campaigns"),
)

_BY_NAME = {r.name: r for r in RECORDS}


def lookup(name: str) -> RecordDef | None:
    return _BY_NAME.get(name)


def drop_reason_known(reason: str) -> bool:
    return any(d.pattern.match(reason) for d in DROPS)


def drop_pattern_known(text: str) -> bool:
    """A reason found in code: an exact key, or an f-string rendered with "<...>" for its formatted parts."""
    return any(d.reason == text or d.pattern.match(text) for d in DROPS) or \
        any(re.sub(r"<[^>]*>", "<code>", text) == d.reason for d in DROPS)


def undeclared(record: Record) -> list[str]:
    """What about this record the catalog does not declare (empty when it is fully declared)."""
    d = lookup(record.name)
    if d is None:
        return [f"record name {record.name!r}"]
    out = []
    if record.kind not in d.kinds:
        out.append(f"{record.name}: kind {record.kind.label}")
    out += [f"{record.name}.{k}" for k in unknown_fields(d, record.data)]
    return out


def unknown_fields(d: RecordDef, data: Any) -> list[str]:
    if not isinstance(data, Mapping):
        return [] if d.value or d.open_fields else ["<scalar value>"]
    if d.name == "agent.drops":
        return [k for k in data if not drop_reason_known(k)]
    if d.open_fields:
        return []
    names = {f.name for f in d.fields}
    return [k for k in data if k not in names]


def names() -> Iterable[str]:
    return (r.name for r in RECORDS)


def _main() -> int:
    import argparse
    import sys

    from .catalog_doc import render

    ap = argparse.ArgumentParser(prog="python -m agent.catalog",
                                 description="Print (or write) docs/data-inventory.md from the record catalog.")
    ap.add_argument("--write", metavar="PATH", nargs="?", const="docs/data-inventory.md",
                    help="write to PATH (default docs/data-inventory.md) instead of stdout")
    a = ap.parse_args()
    text = render()
    if a.write:
        with open(a.write, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
