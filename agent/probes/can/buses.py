"""One watched bus: its reader (kernel sockets for socketcan, python-can otherwise) and the dispatch of
frames to sensor monitors. The per-frame loop lives here and is kept deliberately plain: a dict lookup and
one method call per monitored frame; everything else is per batch or per window."""

from __future__ import annotations

import logging
from typing import Any

from .bcm_counts import proc_path, read_bcm_counts
from .bus_monitor import BusMonitor
from .bus_state import LinkInfo, read_counters, read_link
from .config import BusConfig
from .fields import or_masks
from .monitor import SensorMonitor
from .sockets import CAN_ERR_FLAG, RX_CHANGED, RX_TIMEOUT, BcmSocket, RawReader, filter_for

log = logging.getLogger("icvq.probe.can")
CAN_EFF_FLAG = 0x80000000
_MAX_SKEW_S = 5.0  # a kernel timestamp further than this from "now" means the wall clock stepped


class Bus:
    """State shared by both kinds of bus: monitors, up/down bookkeeping."""

    counted = False  # True when frames/s come from counting in userspace (python-can)

    def __init__(self, cfg: BusConfig, monitor: BusMonitor, sensors: list[SensorMonitor]) -> None:
        self.cfg = cfg
        self.monitor = monitor
        self.sensors = sensors
        self.table: dict[int, SensorMonitor] = {s.spec.key: s for s in sensors if s.spec.mode == "raw"}
        # Frames collect per sensor during a read round and are handed over in one call per sensor.
        self.buckets: dict[int, list[tuple[float, bytes]]] = {k: [] for k in self.table}
        self.bcm_table: dict[int, SensorMonitor] = {s.spec.key: s for s in sensors if s.spec.mode == "bcm"}
        self.is_open = False
        self.error = ""
        self.retry_at = 0.0
        self.failures = 0
        self.frames_read = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def open(self, now: float, allow_transmit: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.is_open = False

    def fds(self) -> list[int]:
        return []

    def drain(self, now: float, off: float) -> int:
        raise NotImplementedError

    def poll(self, now: float) -> None:
        """Per-window controller and traffic reading."""

    def reader_kind(self) -> str:
        return ""


class SocketCanBus(Bus):
    def __init__(self, cfg: BusConfig, monitor: BusMonitor, sensors: list[SensorMonitor]) -> None:
        super().__init__(cfg, monitor, sensors)
        self.raw: RawReader | None = None
        self.bcm: BcmSocket | None = None
        self.link = LinkInfo()
        self.link_polled = -1e18
        self._reader = ""
        self._bcm_proc = ""

    def open(self, now: float, allow_transmit: bool) -> None:
        ifname = self.cfg.ifname
        self.link = read_link(ifname)
        raw_specs = [s.spec for s in self.table.values()]
        self.raw = RawReader(ifname, [filter_for(s.can_id, s.extended) for s in raw_specs],
                             error_frames=self.cfg.error_frames)
        try:
            if self.bcm_table:
                self.bcm = BcmSocket(ifname, allow_transmit=allow_transmit)
                for key, s in self.bcm_table.items():
                    mask = or_masks([st.field.mask(8) for st in s.spec.status], 8)
                    self.bcm.rx_setup(key, s.spec.timeout_s, mask)
                    s.kernel_count_reset()  # a new operation counts from 0
                self._bcm_proc = proc_path(self.bcm.fileno())
        except BaseException:
            self.close()
            raise
        self.is_open = True
        self._reader = "recvmmsg" if self.raw.batched else "recvmsg"
        self.link_polled = now
        self._controller(self.link, now)
        self.poll(now)

    def close(self) -> None:
        for s in (self.raw, self.bcm):
            if s is not None:
                s.close()
        self.raw = self.bcm = None
        self.is_open = False

    def fds(self) -> list[int]:
        return [s.fileno() for s in (self.raw, self.bcm) if s is not None]

    def reader_kind(self) -> str:
        return self._reader

    def drain(self, now: float, off: float) -> int:
        raw = self.raw
        assert raw is not None
        table, buckets = self.table, self.buckets
        bus = self.monitor
        n = 0
        _drops = -1  # SO_RXQ_OVFL of the last frame read: cumulative, so the last one is all we need
        lo = now - _MAX_SKEW_S
        while True:
            frames, fd = raw.read()
            for can_id, ln, data, sec, ns, _drops in frames:
                n += 1
                t = sec + ns * 1e-9 + off
                if t > now or t < lo:
                    t = now
                bucket = buckets.get(can_id)
                if bucket is not None:
                    bucket.append((t, data if ln == 8 else data[:ln]))
                elif can_id & CAN_ERR_FLAG:
                    bus.on_error_frame(t, can_id, data[:ln])
            for can_id, _ln, data, sec, ns, _drops in fd:
                n += 1
                mon = table.get(can_id)
                if mon is None:
                    continue
                if self.cfg.fd:
                    t = sec + ns * 1e-9 + off
                    buckets[can_id].append((t if lo <= t <= now else now, data))
                else:
                    mon.on_fd_frame()
            if not raw.more:
                break
        for key, bucket in buckets.items():
            if bucket:
                table[key].on_frames(bucket)
                bucket.clear()
        drops = _drops
        if drops > bus.drops:
            if bus.drops == 0:
                log.warning("CAN bus %s: the kernel dropped %d frames on our socket (reader too slow)",
                            self.name, drops)
            bus.drops = drops
        if self.bcm is not None:
            self._drain_bcm(now, off)
        self.frames_read += n
        return n

    def _drain_bcm(self, now: float, off: float) -> None:
        assert self.bcm is not None
        for op, can_id, ts, frame in self.bcm.read():
            mon = self.bcm_table.get(can_id)
            if mon is None:
                continue
            t = ts + off if ts and now - _MAX_SKEW_S <= ts + off <= now else now
            if op == RX_TIMEOUT:
                mon.on_kernel_timeout(t)
            elif op == RX_CHANGED and frame is not None:
                mon.on_changed(t, frame)

    def poll(self, now: float) -> None:
        c = read_counters(self.cfg.ifname, self.link.kind)
        if c is not None:
            self.monitor.traffic(c[0], c[1], now)
        if self.bcm is not None:
            # BCM sensors: the frames the kernel received for them (their notifications are changes only).
            counts = read_bcm_counts(self._bcm_proc)
            for key, mon in self.bcm_table.items():
                mon.on_kernel_count(None if counts is None else counts.get(key, 0))

    def poll_link(self, now: float, every_s: float) -> None:
        """Controller state and error counters: only real CAN controllers have them (not vcan)."""
        if self.link.kind != "can" or now - self.link_polled < every_s:
            return
        self.link_polled = now
        info = read_link(self.cfg.ifname)
        if info.kind:
            self.link = info
            self._controller(info, now)

    def _controller(self, info: LinkInfo, now: float) -> None:
        m = self.monitor
        if info.bitrate:
            m.bitrate = info.bitrate
        if info.tec is not None:
            m.tec, m.rec_counter = info.tec, info.rec
        if info.state:
            m.set_state(info.state, now, "ip_link")


class PyCanBus(Bus):
    """python-can buses (virtual, udp_multicast): demos and tests. Every frame reaches userspace here, so
    frames/s are counted and unmonitored ids are counted as `other_frames`."""

    counted = True

    def __init__(self, cfg: BusConfig, monitor: BusMonitor, sensors: list[SensorMonitor]) -> None:
        super().__init__(cfg, monitor, sensors)
        self._bus: Any = None

    def open(self, now: float, allow_transmit: bool) -> None:
        import can

        # The handle stays private to this class, which only ever calls recv(): nothing is sent.
        self._bus = can.Bus(interface=self.cfg.interface, channel=self.cfg.ifname, receive_own_messages=False,
                            **dict(self.cfg.options))
        self.is_open = True

    def close(self) -> None:
        if self._bus is not None:
            try:
                self._bus.shutdown()
            finally:
                self._bus = None
        self.is_open = False

    def reader_kind(self) -> str:
        return "python-can"

    def drain(self, now: float, off: float) -> int:
        bus, table, mon = self._bus, self.table, self.monitor
        n = nbytes = 0
        lo = now - _MAX_SKEW_S
        while True:
            msg = bus.recv(0)
            if msg is None:
                break
            n += 1
            nbytes += msg.dlc
            t = msg.timestamp + off
            if t > now or t < lo:
                t = now
            if msg.is_error_frame:
                mon.on_error_frame(t, msg.arbitration_id | CAN_ERR_FLAG, bytes(msg.data))
                continue
            s = table.get(msg.arbitration_id | CAN_EFF_FLAG if msg.is_extended_id else msg.arbitration_id)
            if s is None or msg.is_remote_frame:
                mon.other_frames += 1
                continue
            if msg.is_fd and not self.cfg.fd:
                s.on_fd_frame()
                continue
            s.on_frame(t, bytes(msg.data))
        mon.count(n, nbytes)
        self.frames_read += n
        return n


def make_bus(cfg: BusConfig, monitor: BusMonitor, sensors: list[SensorMonitor]) -> Bus:
    return SocketCanBus(cfg, monitor, sensors) if cfg.interface == "socketcan" else PyCanBus(cfg, monitor, sensors)
