"""`python -m tools.demo drm`: a Wayland head unit on DRM/KMS, about a minute (it boots the tools/vm guest).

qemu bochs-display (headless) → weston on its DRM backend → weston-simple-shm as the HMI, the icvq-drm-sampler
helper and the display probe on the DRM source (tools/drm_guest.py). The HMI is stopped for 4 s, then killed,
then weston is killed; finally a dark-themed client (black fullscreen weston-terminal with a ticking clock) runs.
The host answers the guest's screendump requests over QMP: qemu's own view of the screen, the ground truth the
test (tests/display/test_display_drm_vm.py) compares against. Kept out of `make demo` because the guest costs
about a minute of emulated CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from tools.qmp import ScreendumpServer

REPO = Path(__file__).resolve().parents[1]
MARK = "ICVQ-DRM-RESULT "
DEVICE = "bochs-display,xres=1024,yres=768"


def run_drm_guest(shared: Path, *, stream: Any = None, timeout_s: float = 170.0) -> tuple[dict[str, Any], str]:
    """One guest boot through every scenario; returns (the guest's result, its whole output). `shared` receives
    the screendumps. Raises tools.vm.VmError, or RuntimeError when the guest or the dump thread failed."""
    from tools.vm import run_in_vm

    qmp_sock = shared / "qmp.sock"
    dumper = ScreendumpServer(qmp_sock, shared)
    dumper.start()
    box: dict[str, Any] = {}

    def boot() -> None:
        try:
            box["res"] = run_in_vm(
                [sys.executable, "-m", "tools.drm_guest", str(shared)], vcan=0, timeout_s=timeout_s, cwd=REPO,
                rw_dirs=[shared], env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)},
                devices=[DEVICE], modules=["bochs"], qmp_socket=qmp_sock, stream=stream)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e
    t = threading.Thread(target=boot, name="drm-guest")
    t.start()
    t.join()
    dumper.stop.set()
    dumper.join()
    if "error" in box:
        raise box["error"]
    res = box["res"]
    (shared / "guest-output.txt").write_text(res.output)
    lines = [ln for ln in res.output.splitlines() if ln.startswith(MARK)]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"guest exited {res.returncode} (output in {shared}):\n{res.output[-4000:]}")
    if dumper.error is not None:
        raise RuntimeError(f"screendump thread failed: {dumper.error!r}")
    return dict(json.loads(lines[-1][len(MARK):])), res.output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo drm", description=__doc__)
    ap.add_argument("--out", help="keep the screendumps and the guest output here (default: a temp dir)")
    ap.add_argument("-v", "--verbose", action="store_true", help="stream the guest's output")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="icvq-demo-drm-") as tmp:
        shared = Path(args.out).resolve() if args.out else Path(tmp)
        shared.mkdir(parents=True, exist_ok=True)
        print("[demo drm] booting the guest: bochs-display 1024x768, weston (DRM backend), weston-simple-shm ...",
              flush=True)
        result, _ = run_drm_guest(shared, stream=sys.stdout if args.verbose else None)
        t0 = result["marks"]["weston_up"]
        print("\n  scenario marks (guest seconds):")
        for name, t in sorted(result["marks"].items(), key=lambda kv: kv[1]):
            print(f"    {t - t0:7.2f}  {name}")
        print("\n  episodes:")
        for phase in ("phase1", "phase2", "phase2_noregion", "phase2_thin"):
            for r in result[phase]:
                if r["kind"] != "end":
                    continue
                d = r["data"]
                brief = {k: d[k] for k in ("duration_s", "cause", "ended_by", "signals") if k in d}
                print(f"    {r['name']:<15} {json.dumps(brief)}")
        dark = result["dark_state"]
        print(f"\n  dark theme: grid lit {100 * (dark['lit'] or 0):.3f} % (dark since "
              f"{'yes' if dark['dark_since'] is not None else 'no'}), clock region lit "
              f"{100 * dark['region_lit'][0]:.1f} %, black: {'yes' if dark['black_since'] is not None else 'no'}")
        black_noregion = any(r["name"] == "display.black" for r in result["phase2_noregion"])
        print(f"  the same without a clock region: grid lit {100 * (dark['noregion_lit'] or 0):.3f} %, "
              f"black: {'yes' if black_noregion else 'no'} (new frames with lit pixels keep flipping)")
        black_thin = any(r["name"] == "display.black" for r in result["phase2_thin"])
        trace = dark["thin_trace_lit"]
        print(f"  text between grid points: grid lit {100 * (dark['thin_lit'] or 0):.3f} %, whole-row trace lit "
              f"{'-' if trace is None else f'{100 * trace:.3f} %'}, black: {'yes' if black_thin else 'no'}")
        print(f"  screendumps (qemu QMP): {', '.join(sorted(p.stem for p in shared.glob('*.ppm')))}"
              + (f" in {shared}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
