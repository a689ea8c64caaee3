"""The black box: a pre-trigger ring buffer of high-rate context, snapshots around episodes, and collection
campaigns sent by the backend (issue 16; docs/blackbox.md).

Modules: `settings` (the `[blackbox]` config), `sysread` (/proc readers), `ring` (the bounded buffer),
`columns` (the snapshot's columnar encoding), `triggers` (what starts a snapshot, rate limits), `recorder`
(the thread and the pipeline observer), `snapshot` (what a trigger's match sets off; imported then),
`budget_store` (the snapshot budget on disk), `campaign` (the document's schema), `campaigns` (MQTT handling),
`campaign_store` (persistence), `campaign_types` (identity, refusal), `wiring` (how the daemon hooks it in).
"""
