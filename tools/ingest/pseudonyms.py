"""Mapping vehicle pseudonyms back to VINs at the backend (the agent side: agent/pseudonym.py).

A pseudonym is HMAC-SHA256(fleet key, VIN) cut to 128 bits, so it cannot be inverted: the backend needs the
fleet key AND its register of VINs, and recomputes the table pseudonym → VIN (one HMAC per VIN: a million
VINs took 4.4 s on the shared 2-core test machine, docs/performance.md). With the table the ingest checks a
payload against its topic in VIN terms — so batches sealed under the VIN before the switch, published on the
pseudonym's topic after it, still match and dedup with their first copy — and stores the VIN. An unknown
pseudonym (a VIN missing from the register) is stored as received, never guessed. `python -m tools.ingest
pseudonym` prints the table or one entry, for provisioning (the vehicle's certificate and ACL name its
pseudonym).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from agent.pseudonym import pseudonym, read_key


def read_vins(path: str) -> list[str]:
    """The VIN register: one VIN per line; blank lines and # comments skipped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


class Pseudonyms:
    def __init__(self, key: bytes, vins: Iterable[str]) -> None:
        self.to_vin = {pseudonym(key, v): v for v in vins}

    @classmethod
    def from_files(cls, key_file: str, vins_file: str) -> Pseudonyms:
        return cls(read_key(key_file), read_vins(vins_file))

    def resolve(self, vehicle: str) -> str:
        """The VIN behind a pseudonym; anything else (a VIN, an unknown pseudonym) unchanged."""
        return self.to_vin.get(vehicle, vehicle)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ingest pseudonym",
                                 description="Print vehicle pseudonyms: 'PSEUDONYM VIN' per line.")
    ap.add_argument("--key", required=True, help="the fleet key file (first line; mode 0600), as on the cars")
    ap.add_argument("--vins", help="file with one VIN per line (the register); default: VINs on the command line")
    ap.add_argument("vin", nargs="*", help="VINs to print the pseudonym of")
    a = ap.parse_args(argv)
    vins = list(a.vin)
    if a.vins:
        vins += read_vins(a.vins)
    key = read_key(a.key)
    for v in vins:
        sys.stdout.write(f"{pseudonym(key, v)} {v}\n")
    return 0
