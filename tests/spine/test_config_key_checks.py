"""A rule of a single key (`opt(check=...)`) is reported beside every other error of the same run: the
vehicle's topic levels used to be checked in `validate()`, which runs only once every key is right and
stops at the first, so `id = "a/b"` next to a missing `fleet` or a `device` with a space took three runs."""

from __future__ import annotations

import pytest

from agent.config import from_mapping
from agent.errors import ConfigError

TOPIC = "must be non-empty without '/', '+', '#', NUL or spaces"


@pytest.mark.parametrize("vehicle, want", [
    ({"id": "a/b", "device": "h u", "fleet": "f"}, {"vehicle.id": TOPIC, "vehicle.device": TOPIC}),
    ({"id": "a/b", "fleet": "f+"}, {"vehicle.id": TOPIC, "vehicle.device": "required key is missing",
                                    "vehicle.fleet": TOPIC}),
    ({"id": "V", "device": "d", "fleet": "", "pseudonym_key_file": "key"},
     {"vehicle.fleet": TOPIC, "vehicle.pseudonym_key_file": "must be an absolute path"}),
])
def test_every_vehicle_key_error_in_one_run(vehicle: dict[str, str], want: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping({"vehicle": vehicle, "spool": {"max_mib": 0.1}})
    got = {err.key: err.message for err in e.value.errors}
    assert got == {**want, "spool.max_mib": "must be >= 0.25, got 0.1"}


def test_good_vehicle_keys_pass() -> None:
    cfg = from_mapping({"vehicle": {"id": "VIN0001", "device": "hu", "fleet": "f",
                                    "pseudonym_key_file": "/etc/icvq/fleet.key"}})
    assert cfg.vehicle.id == "VIN0001"
