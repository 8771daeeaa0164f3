"""Durable instance storage: spool files, the UID-addressed store, quarantine."""
