"""Report stage: the DICOM objects (TID 1500 SR, Secondary Capture, GSPS, KOS) a run sends back to the PACS."""
