"""`icvq status` says which of a probe's sources are down and why (and the probe is degraded while it retries
them): a Wayland head unit whose DRM helper is not running must not read as a healthy display probe."""

from __future__ import annotations

from agent.fieldcli.status import render


def test_probe_sources_are_shown_with_why_they_are_down() -> None:
    st = {"running": True, "agent": "running", "now": 100.0, "probes": {
        "display": {"state": "ok", "last_error": "", "framebuffer": "",
                    "sources": {"framebuffer": "down: missing: no sampler socket at /run/icvq-drm/sampler.sock",
                                "drm": "up"}},
        "system": {"state": "ok", "last_error": ""}}}
    text = render(st)
    line = next(ln for ln in text.splitlines() if ln.startswith("display sources"))
    assert "drm up" in line and "framebuffer DOWN (missing: no sampler socket at /run/icvq-drm/sampler.sock)" in line
    assert not any(ln.startswith("system sources") for ln in text.splitlines())


def test_sources_up_show_the_frame() -> None:
    st = {"running": True, "agent": "running", "now": 100.0, "probes": {
        "display": {"state": "ok", "last_error": "", "framebuffer": "drm XR24 1920x1080 32bpp",
                    "sources": {"framebuffer": "up", "drm": "up"}}}}
    line = next(ln for ln in render(st).splitlines() if ln.startswith("display sources"))
    assert line.split(None, 2)[2] == "drm up, framebuffer up; frame drm XR24 1920x1080 32bpp"
