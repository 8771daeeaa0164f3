"""DICOM networking: the Storage/Verification SCP, its presentation contexts and statuses."""
