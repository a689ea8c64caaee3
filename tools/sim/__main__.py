"""python -m tools.sim {link|fleet} ...: scenario traces for one vehicle, or traffic from a simulated fleet."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("  link   replay a connectivity scenario (real gpsd via gpsfake, AT modem on a pty, canned mmcli)")
        print("  fleet  publish traffic from N simulated cars with the agent's own encoder and uplink")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "link":
        from .link_cli import main as link_main

        return link_main(rest)
    if cmd == "fleet":
        from .fleet import main as fleet_main

        return fleet_main(rest)
    print(f"python -m tools.sim: unknown command {cmd!r} (link, fleet)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
