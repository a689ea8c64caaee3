"""What the idle path needs of campaigns: the agent's identity for targeting and the refusal error.

The document's schema and parser (agent/blackbox/campaign.py, ~60 KiB of Python objects once imported) is
imported only when a campaign arrives, is restored from disk or is listed: a car without campaigns never loads it
(issue 13: idle RSS). campaign.py re-exports both names, so either module may be used.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..dataclass_shared import dataclass


class CampaignError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


@dataclass(frozen=True)
class Identity:
    fleet: str
    vehicle: str
    device: str
    software: Mapping[str, str]     # component → version, including "agent"
