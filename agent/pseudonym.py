"""The vehicle's identity on the wire: the VIN, or a keyed pseudonym of it when `[vehicle] pseudonym_key_file`
is set.

pseudonym = "ps-" + the first 128 bits, in hex, of HMAC-SHA256(fleet key, VIN). The fleet key is the file's
first line (at least 32 characters, e.g. `openssl rand -hex 32`), used as its UTF-8 bytes; the backend holds
the same key and its register of VINs and recomputes the table pseudonym → VIN (tools/ingest/pseudonyms.py):
an HMAC cannot be inverted, and without the key a pseudonym cannot be tested against a guessed VIN either.
128 bits keep collisions out of reach for any fleet (birthday bound 2^64) in 35 characters, and the result
passes the topic-level rules of `vehicle.id`.

The pseudonym replaces the VIN everywhere the VIN would leave the car: topic level, batch identity (`veh`),
birth/death status and MQTT client id. Locally (logs, `icvq status`, history) the configured id stays, so the
roadside engineer still sees the VIN. Read once at start, never on reload (an identity change needs a
restart, as for `vehicle.id` itself). No threads.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import replace

from .config import VehicleConfig
from .errors import ConfigError

PREFIX = "ps-"
MIN_KEY_CHARS = 32


def pseudonym(key: bytes, vin: str) -> str:
    return PREFIX + hmac.new(key, vin.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def read_key(path: str) -> bytes:
    """The fleet key: first line of a file only its owner may read (like ssh with private keys)."""
    key_path = "vehicle.pseudonym_key_file"
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            first = f.readline(4096)
    except OSError as e:
        raise ConfigError(f"cannot read the fleet key {path}: {e.strerror}", key=key_path) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the fleet key {path} is accessible by group or others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it", key=key_path)
    key = first.rstrip(b"\r\n")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"the fleet key in {path} is shorter than {MIN_KEY_CHARS} characters "
                          "(make one with `openssl rand -hex 32`)", key=key_path)
    return key


def wire_vehicle(v: VehicleConfig) -> VehicleConfig:
    """The identity to put on the wire: `v` itself, or `v` with its id replaced by the pseudonym."""
    if not v.pseudonym_key_file:
        return v
    return replace(v, id=pseudonym(read_key(v.pseudonym_key_file), v.id))
