"""How every builder shows a finding: its key slice, its caption and its tracking identifier (the detector's findings
themselves are in detector.findings)."""

from __future__ import annotations

from detector.findings import Finding, SliceBox


def key_slice(finding: Finding) -> SliceBox:
    """The finding's key slice: its highest-scoring box, the one nearest the middle on ties."""
    middle = (len(finding.slices) - 1) / 2.0
    best = max(range(len(finding.slices)), key=lambda i: (finding.slices[i].score, -abs(i - middle)))
    return finding.slices[best]


def finding_caption(n: int, finding: Finding) -> str:
    """The text drawn next to a finding's box: number, label and score."""
    return f"#{n + 1} {finding.label} {finding.score:.2f}"


def finding_name(n: int, finding: Finding) -> str:
    """The finding's tracking identifier text: the detector's, else "finding N" (numbered from 1)."""
    return finding.tracking_id or f"finding {n + 1}"

