"""Rebuild config/agent.toml's probe sections from config/probes/<name>.toml (the per-probe documented samples,
Telegraf style). `python -m tools.config_sample` rewrites the file; `--check` exits 1 when it is stale."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "# ==== probes: generated from config/probes/*.toml by `python -m tools.config_sample` ===="
ORDER = ["system", "display", "link", "can"]


def render(repo: Path = REPO) -> str:
    text = (repo / "config" / "agent.toml").read_text()
    head = text.split(MARKER)[0].rstrip() + "\n"
    samples = sorted((repo / "config" / "probes").glob("*.toml"),
                     key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    parts = [head, "\n" + MARKER + "\n"]
    for p in samples:
        parts.append("\n" + p.read_text().rstrip() + "\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    new = render()
    path = REPO / "config" / "agent.toml"
    if "--check" in args:
        if path.read_text() != new:
            print("config/agent.toml is stale: run `python -m tools.config_sample`", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
