"""Triage notifications: each live run's study-level result told to RIS (HL7 v2), FHIR and webhook channels,
through an outbox like DICOM delivery's (leases, backoff, dead letters, exactly once per study version)."""
