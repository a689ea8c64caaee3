"""Simulators that stand in for the vehicle's real parts in tests and the demo (`python -m tools.sim ...`)."""
