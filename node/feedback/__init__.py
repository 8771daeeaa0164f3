"""The return path from the reader: their reviews of our runs, read from the SRs their viewer saved in the PACS."""

from node.feedback.examine import FeedbackStage, Outcome
from node.feedback.feedback_records import feedback_record, list_feedback

__all__ = ["FeedbackStage", "Outcome", "feedback_record", "list_feedback"]
