"""ctnode's service side: receive, store, stabilize, detect, report, deliver, audit."""
