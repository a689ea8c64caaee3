"""icvq: in-vehicle quality telemetry agent."""

__version__ = "0.1.0"
