"""`icvq-agent`: wiring only. Build the pieces from config, start them, supervise, stop.

The entry point is agent/__main__.py, which reads the config before this module's imports (issue 13); `main`
here is the same entry, for callers that run the daemon in-process.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

# extensions (control socket, history) with the rest, before any start-up work: imported after it, their objects
# landed among start-up's freed ones and kept those pages resident (issue 13: -0.35 MiB VmRSS, tools/bench/lean).
from . import __version__, config, extensions, health, inherited, memory
from .blackbox.wiring import Parts as BlackBoxParts
from .clock import Clock, SystemClock
from .config import AgentConfig, probe_module
from .errors import EX_CONFIG, ConfigError
from .inventory import inventory
from .pipeline import Pipeline
from .probe import Probe, ProbeContext
from .records import RecordFactory
from .sdnotify import Notifier
from .software import read as read_software
from .spool import Spool
from .uplink import Uplink

log = logging.getLogger("icvq.agent")


# Start-up's modules the daemon process releases once it has started (run(lean=True); issue 13): the fleet key
# is read at start only. Imported where used, never at the top.
AFTER_START = ("agent.pseudonym",)


def build_probes(cfg: AgentConfig, ctx: ProbeContext) -> list[Probe]:
    probes: list[Probe] = []
    for name, pcfg in cfg.probes.items():
        if getattr(pcfg, "enabled", True):  # a disabled probe's package is not even imported (issue 13)
            probes.extend(probe_module(name).build(pcfg, ctx))
    return probes


class Daemon:
    def __init__(self, cfg: AgentConfig, config_path: str | None = None, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.rec = RecordFactory(self.clock)
        self.spool = Spool(cfg.spool.path, int(cfg.spool.max_mib * 2**20),
                           memory_max_records=cfg.spool.memory_max_records,
                           max_record_bytes=min(48 * 1024, cfg.uplink.max_batch_kib * 512),
                           min_free_bytes=int(cfg.spool.min_free_mib * 2**20),
                           ledger_path=cfg.spool.ledger_path
                           or os.path.join(os.path.dirname(cfg.control.socket), "drops-ledger.json"),
                           boot_id=self.clock.boot_id)
        from .pseudonym import wire_vehicle  # start-up only: released once started (run, AFTER_START)

        self.wire_vehicle = wire_vehicle(cfg.vehicle)  # the VIN or its pseudonym, fixed until restart
        self.software = read_software(cfg.agent.components, cfg.agent.software)  # (versions, SWINs) for births
        on_wire = replace(cfg, vehicle=self.wire_vehicle)  # for everything that names the vehicle in MQTT
        self.blackbox = BlackBoxParts(on_wire, self.clock, emit=lambda r: self.pipeline.intake(r),
                                      send=lambda topic, payload: self.uplink.send(topic, payload),
                                      software=self.software[0], refresh_birth=lambda: self.uplink.refresh_birth())
        self.uplink = Uplink(cfg.uplink, self.wire_vehicle, boot_id=self.clock.boot_id,
                             birth_fields=self.birth_fields, wall_ms=lambda: int(self.clock.wall() * 1000),
                             **self.blackbox.uplink_hooks())
        self.pipeline = Pipeline(on_wire, self.spool, self.uplink, self.rec)
        self.blackbox.attach(self.pipeline)
        self.pipeline.health_sources.append(self._probe_health)
        self.pipeline.health_sources.append(self._verdict_health)
        self.probes: list[Probe] = []
        self.control: extensions.Extensions | None = None
        self.onsets = health.Onsets()
        self._stop = threading.Event()       # wakes the main loop: a stop or a reload was asked for
        self._stopping = threading.Event()   # a stop was asked for (SIGTERM/SIGINT)
        self._reload = threading.Event()
        # Modules a reload may import that are released again after it (the real process: run(lean=True)).
        self.transient: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------- lifecycle
    def _ctx(self) -> ProbeContext:
        return ProbeContext(clock=self.clock, emit=self.pipeline.intake, uplink=self.uplink.view,
                            spool_dir=str(Path(self.cfg.spool.path).parent), context=self.blackbox.tap,
                            way_back=lambda reason: self.uplink.way_back(reason))

    def start(self) -> None:
        previous = self.spool.open()
        if previous == "unclean":
            log.warning("the previous run did not stop cleanly (power cut, crash or kill -9)")
        elif previous == "unknown":
            log.error("running without a writable spool: records are held in memory and still sent")
        start_event = self.rec.event("agent.start", {
            "version": __version__, "config": self.cfg.digest, "previous_shutdown": previous,
            "spool_records": self.spool.n_records, "spool_batches": self.spool.n_batches})
        self.pipeline.start()
        self.blackbox.start()  # campaigns restored from disk before the uplink can deliver newer ones
        self.uplink.start()
        self.probes = build_probes(self.cfg, self._ctx())
        for p in self.probes:
            p.start()
        self._start_extensions()
        self.pipeline.intake(start_event)  # after the history is attached, so `icvq events` shows restarts
        log.info("icvq-agent %s started: vehicle %s/%s, %d probes, spool %s (%d records, %d batches waiting)",
                 __version__, self.cfg.vehicle.id, self.cfg.vehicle.device, len(self.probes),
                 self.cfg.spool.path, self.spool.n_records, self.spool.n_batches)

    def _start_extensions(self) -> None:
        """Field-engineer extensions (control socket, history) hang off the pipeline, outside the data path."""
        self.control = extensions.start(self)

    def stop(self) -> None:
        for p in self.probes:
            p.stop()
        self.blackbox.stop()  # snapshots still in their post window go out with what the ring holds
        self.pipeline.intake(self.rec.event("agent.stop", {"version": __version__}))
        # Drain first so the control socket still answers `icvq flush --wait` and the history sees the
        # episode ends that stopping probes emitted.
        self.pipeline.stop(drain_s=5.0)
        extensions.stop(self)
        self.uplink.stop()
        self.spool.close()
        # The run's tally, for the field and for tests that account for every record (docs/field-guide.md).
        log.info("icvq-agent stopped: %d records accepted this run",
                 self.pipeline.counters.snapshot().get("accepted", 0))

    def reload(self) -> None:
        """SIGHUP: re-read config; restart probes (and the uplink when its settings changed)."""
        loaded_before = set(sys.modules)
        try:
            self._apply_reload()
        finally:
            config.release(self.transient, keep=loaded_before)

    def _apply_reload(self) -> None:
        try:
            new = config.load(self.config_path, lean=True)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            return
        if new.spool.path != self.cfg.spool.path or new.vehicle != self.cfg.vehicle:
            log.warning("spool path or vehicle identity changed: takes effect on restart only")
        if new.blackbox != self.cfg.blackbox:
            log.warning("[blackbox] changed: takes effect on restart only (the ring keeps running as it was)")
        for p in self.probes:
            p.stop()
        uplink_changed = new.uplink != self.cfg.uplink
        self.cfg = new
        self.software = read_software(new.agent.components, new.agent.software)
        self.pipeline.cfg = replace(new, vehicle=self.wire_vehicle)
        if uplink_changed:
            self.uplink.stop()
            self.uplink = Uplink(new.uplink, self.wire_vehicle, boot_id=self.clock.boot_id,
                                 birth_fields=self.birth_fields,
                                 wall_ms=lambda: int(self.clock.wall() * 1000), events=self.uplink.events,
                                 **self.blackbox.uplink_hooks())
            self.pipeline.uplink = self.uplink
            self.uplink.start()
        else:
            # Same settings, maybe new file contents (a renewed certificate, a chmod-ed password file): an uplink
            # held in its back-off (up to backoff_max_s) tries again now, as the operator expects of a reload.
            self.uplink.way_back("config reloaded")
        self.probes = build_probes(new, self._ctx())
        for p in self.probes:
            p.start()
        log.info("config reloaded (digest %s)", new.digest)

    def request_stop(self) -> None:
        self._stopping.set()
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._stop.set()

    def flush(self) -> None:
        self.pipeline.request_flush()

    # ------------------------------------------------------------------------------------------ views
    def birth_fields(self) -> dict[str, Any]:
        return {"agent": __version__, "config": self.cfg.digest,
                "inventory": inventory(*self.software), "started": int(self.started_wall),
                "campaigns": self.blackbox.campaign_ids()}

    def _probe_health(self) -> list[Any]:
        return [self.rec.health("agent.probe", {"probe": p.name, "state": st["state"], **st["counters"]})
                for p in self.probes for st in [p.status()]]

    def _verdict_health(self) -> list[Any]:
        v = self.verdict()
        return [self.rec.health("agent.health", {"verdict": v.state, "reasons": [r.code for r in v.problems]})]

    def verdict(self) -> health.Verdict:
        """The one health verdict (agent/health.py): control status, STATUS=, the agent.health record."""
        return health.verdict(health.gather(self, time.time(), time.monotonic()))

    def history_error(self) -> str:
        hist = self.control.history if self.control is not None else None
        return hist.last_error if hist is not None else ""

    def status(self) -> dict[str, Any]:
        pl = self.pipeline.status()
        episodes = pl.pop("episodes")
        return {
            "running": True, "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "config": {"path": self.config_path, "digest": self.cfg.digest, "sources": list(self.cfg.sources)},
            "vehicle": {"id": self.cfg.vehicle.id, "device": self.cfg.vehicle.device,
                        "fleet": self.cfg.vehicle.fleet, "wire_id": self.wire_vehicle.id},
            "software": {"versions": self.software[0], "swin": self.software[1]},
            "clock": {"boot_id": self.clock.boot_id, "synced": self.clock.synced()},
            "probes": {p.name: p.status() for p in self.probes},
            "episodes": episodes + [e for p in self.probes for e in p.active_episodes()],
            "blackbox": self.blackbox.status(),
            **pl,
        }

    def healthy(self) -> bool:
        return time.monotonic() - self.pipeline.alive_mono < health.PIPELINE_STALL_S

    def status_line(self) -> str:
        """systemd's STATUS=: the verdict's own line (the same words `icvq status` shows), then the spool."""
        s = self.spool
        return f"{self.verdict().line()} | spool {s.n_records} records, {s.n_batches} batches"

    # ------------------------------------------------------------------------------------------ main
    def run_forever(self, notifier: Notifier) -> None:
        notifier.ready(self.status_line())
        ping_every = (notifier.watchdog_s or 20.0) / 2
        last_ping = 0.0
        last_status = ""
        last_trim = float("-inf")  # the first turn trims what start-up left in the heap
        while True:
            # Signals set _stop; otherwise only the watchdog ping and the STATUS line need a turn (issue 13:
            # this was a wake-up every 2 s; 5 s keeps `systemctl status` current enough).
            self._stop.wait(min(ping_every, 5.0))
            self._stop.clear()
            # A SIGHUP that arrives while a reload runs (`systemctl reload` twice, or the second one landing
            # during the first's module release) asks for another reload: the file may have changed again. It
            # used to leave _stop set, and the loop then stopped the agent cleanly (exit 0, so systemd's
            # Restart=on-failure left it down). Only a stop request stops.
            while self._reload.is_set() and not self._stopping.is_set():
                self._reload.clear()
                notifier.reloading()
                self.reload()
                notifier.ready(self.status_line())
            if self._stopping.is_set():
                break
            now = time.monotonic()
            # Ping only while the pipeline thread really turns: a hung agent must be restarted by systemd.
            if notifier.watchdog_s and self.healthy() and now - last_ping >= ping_every:
                notifier.watchdog()
                last_ping = now
            line = self.status_line()
            if line != last_status:
                notifier.status(line)
                last_status = line
            if now - last_trim >= memory.TRIM_EVERY_S:
                hist = self.control.history if self.control is not None else None
                if hist is not None:
                    hist.idle_close()   # before the trim, which then hands its pages back
                memory.trim()
                last_trim = now
        notifier.stopping()
        notifier.status("stopping: flushing spool")


def lower_priority(nice: int, io_idle: bool) -> None:
    """A telemetry agent must never compete with the HMI or ADAS processes for CPU or flash."""
    try:
        cur = os.nice(0)
        if nice > cur:
            os.nice(nice - cur)
    except OSError:
        pass
    if io_idle:
        try:
            psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
        except (OSError, AttributeError, psutil.Error):
            pass


def setup_logging(level: str) -> None:
    # journald stamps time and unit itself; stderr lines stay short.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr, force=True)


def main(argv: list[str] | None = None) -> int:
    """`icvq-agent` (agent/__main__.py): parse the arguments, read the config, run until stopped."""
    from .__main__ import main as entry

    return entry(argv)


def run(cfg: AgentConfig, config_path: str | None, log_level: str | None, *, lean: bool = False,
        keep: frozenset[str] = frozenset()) -> int:
    """Run the daemon on a config already read and checked. `lean` (agent/__main__.py): once started, release
    AFTER_START, and after each reload what it imported of those and config.STARTUP_MODULES; never a module
    in `keep` (the caller's)."""
    setup_logging(log_level or cfg.agent.log_level)
    if inherited.adopt_stdin_kmsg():
        log.info("reading the kernel log from the descriptor systemd passed on stdin")
    lower_priority(cfg.agent.nice, cfg.agent.io_idle)
    memory.one_arena()  # before the first thread (issue 13: RSS)
    daemon = Daemon(cfg, config_path)
    if lean:
        daemon.transient = (*config.STARTUP_MODULES, *AFTER_START)
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    notifier = Notifier()
    try:
        daemon.start()
    except ConfigError as e:
        log.error("config error: %s", e)
        return EX_CONFIG
    if lean:
        config.release(AFTER_START, keep=keep)
    try:
        daemon.run_forever(notifier)
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
