"""The test broker lives in tools/localbroker.py so `make demo` uses the same code."""

from tools.localbroker import Mosquitto, free_port, wait_port

__all__ = ["Mosquitto", "free_port", "wait_port"]
