"""HL7 v2 from the RIS: ORU^R01 radiology reports over MLLP, acknowledged AA/AE/AR."""
