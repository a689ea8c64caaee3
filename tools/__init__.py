"""Off-car tools: backend ingest, simulators, benchmarks, the VM test harness."""
