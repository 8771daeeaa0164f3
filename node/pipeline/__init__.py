"""Pipeline: when a study is ready (stabilize), which model reads it (routing), and the run queue and workers."""
