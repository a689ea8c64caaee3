"""Backend ingest: MQTT → strict decode → dedup on batch identity → store."""
