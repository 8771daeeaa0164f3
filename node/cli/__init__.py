"""The `ctnode` command line."""
