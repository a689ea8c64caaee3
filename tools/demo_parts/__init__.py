"""Scenario parts that `make demo` (tools/demo.py) runs beside the agent, one module per signal family.

Each module exposes::

    @contextlib.contextmanager
    def scenario(workdir: pathlib.Path, duration_s: float) -> Iterator[dict[str, dict[str, Any]]]:
        # start the simulated source (threads/processes), yield the agent config sections it needs,
        # e.g. {"probes.display": {"enabled": True, ...}}; stop everything on exit.

    TITLE = "screen freeze on a simulated head unit"   # one line for the demo's narration
    EXPECT = ["display.freeze"]                        # record names the demo checks arrived
"""
