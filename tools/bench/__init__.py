"""Benchmarks: ratios against a baseline measured in the same run. Each module runs as
`python -m tools.bench.<name>` and prints a markdown section for docs/performance.md."""
