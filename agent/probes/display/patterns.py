"""Kernel log lines that mean the display pipeline or the GPU hung, per driver. Data, not code: the config's
`extra_patterns` add to these without a release."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ...dataclass_shared import dataclass

# (driver, short name, regex). Sources: the format strings in drivers/gpu/drm/** (see docs/display.md).
BUILTIN: tuple[tuple[str, str, str], ...] = (
    # DRM core atomic helpers wait 10 s for each of these before complaining.
    ("drm", "flip_done_timeout", r"\[CRTC:\d+:[^\]]*\] (?:hw_done or )?flip_done timed out"),
    ("drm", "hw_done_timeout", r"\[CRTC:\d+:[^\]]*\] hw_done timed out"),
    ("drm", "commit_wait_timeout", r"\[(?:CRTC|PLANE|CONNECTOR):\d+:[^\]]*\] commit wait timed out"),
    ("drm", "vblank_wait_timeout", r"vblank wait timed out on crtc \d+"),
    ("etnaviv", "recover_hung_gpu", r"recover hung GPU!"),
    ("panfrost", "sched_timeout", r"gpu sched timeout, js=\d+"),
    ("panfrost", "js_fault", r"js fault, js=\d+"),
    ("lima", "job_timeout", r"lima job timeout"),
    ("msm", "hangcheck", r"hangcheck detected gpu lockup rb \d+!"),
    ("msm_dpu", "frame_done_timeout", r"\[dpu error\]enc\d+ frame done timeout"),
    ("msm_dpu", "vblank_timeout", r"\[dpu error\]vblank timeout"),
    ("i915", "gpu_hang", r"GPU HANG: ecode \S+"),
    ("amdgpu", "ring_timeout", r"ring \S+ timeout, signaled seq=\d+, emitted seq=\d+"),
    ("mali_kbase", "job_hard_stopped", r"JS: Job Hard-Stopped"),
    ("mali_kbase", "gpu_reset", r"Resetting GPU \(allowing up to \d+ ms\)"),
)

# "panfrost ff9a0000.gpu: ..." / "i915 0000:00:02.0: [drm] ..." — dev_printk's "<driver> <device>: " prefix
# names the device even when the message itself comes from the DRM core.
_DEV_PREFIX = re.compile(r"^(?P<module>[\w.-]+) (?P<device>[\w:.-]+): ")


@dataclass(frozen=True)
class HangPattern:
    driver: str
    name: str
    regex: re.Pattern[str]


@dataclass(frozen=True)
class HangMatch:
    driver: str
    pattern: str
    line: str
    device: str


def compile_patterns(extra: Iterable[tuple[str, str, str]] = ()) -> tuple[HangPattern, ...]:
    """Built-ins then extras; `extra` is (driver, name, regex) with regexes already checked by the config."""
    out = [HangPattern(d, n, re.compile(rx)) for d, n, rx in BUILTIN]
    for i, (driver, name, rx) in enumerate(extra):
        out.append(HangPattern(driver, name or f"extra{i}", re.compile(rx)))
    return tuple(out)


def match_line(patterns: Iterable[HangPattern], text: str) -> HangMatch | None:
    """The first pattern that matches `text` (one kernel log message without its kmsg prefix)."""
    for p in patterns:
        if p.regex.search(text):
            m = _DEV_PREFIX.match(text)
            return HangMatch(p.driver, p.name, text, f"{m['module']} {m['device']}" if m else "")
    return None
