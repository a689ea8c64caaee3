"""One module (or package) per signal family; see agent/probe.py for the contract."""
