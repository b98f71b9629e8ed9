"""mccp-bridge composition: CLI, configuration, the per-call nursery, caller authentication,
the embedded registrar, metrics and logs. Uses `mccp`, `sip` and `rtp`; nothing imports `bridge`."""
