"""Study-level labels from radiology reports: the extractor, and the reports it reads them from."""
