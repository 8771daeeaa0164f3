"""The one input every builder of a run starts from: the run, the site options, its checked series, UIDs and time."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, TM

from detector.findings import Finding
from node.reports.captions import key_slice
from node.reports.options import AlgorithmIdentity, ReportOptions, ReportRun
from node.reports.sources import SourceSeries
from node.events import OutputKind
from node.reports.uids import Part, RunUids, object_identity

# (date, time) attribute pairs that highdicom stamps with the clock (and the contributing equipment's time); a report rebuilds byte-identical only once
# each carries the run's time instead.
_STAMPED = (
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
    ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
    ("PresentationCreationDate", "PresentationCreationTime"),
)
# Where a run without its own time takes it from: the newest of these (date, time) pairs of its source images.
_SOURCE_TIMES = (("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime"),
                 ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime"))
_EPOCH = datetime.datetime(1970, 1, 1)


@dataclass(frozen=True)
class PreparedReport:
    """A run ready to report: its source series checked against its findings once, its UIDs and its time.

    Build it with :meth:`of`; every builder (SR, SC, GSPS, KOS) takes it as is.
    """

    run: ReportRun
    options: ReportOptions
    series: SourceSeries
    uids: RunUids
    time: datetime.datetime

    @classmethod
    def of(cls, run: ReportRun, options: ReportOptions) -> PreparedReport:
        """Check the run (ValueError/KeyError with the reason when its findings do not fit its series)."""
        series = SourceSeries(run.sources, run.key_slices_hu)
        series.check_findings(run.findings)
        time = run.created if run.created is not None else _newest_source_time(series.images)
        return cls(run, options, series, RunUids(options.uid_root, run.run_id), time.replace(tzinfo=None))

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(self.run.findings)

    @property
    def algorithm(self) -> AlgorithmIdentity:
        return self.run.algorithm

    def region_uid(self, n: int, k: int) -> UID:
        """The Tracking UID of the ``k``-th image region of finding ``n``: the finding's own on its key slice
        (so a viewer shows the finding's certainty there, once), one of its own elsewhere."""
        finding = self.run.findings[n]
        if finding.slices[k] is key_slice(finding):
            return self.uids.instance(Part.FINDING, n)
        return self.uids.region(n, k)

    def identity(self, kind: OutputKind, index: int = 0) -> dict[str, Any]:
        """The highdicom keyword arguments naming the ``index``-th object of ``kind`` of this run."""
        return object_identity(self.uids, kind, index, self.options.series_number_base, self.options.manufacturer)

    def stamp(self, dataset: Dataset) -> None:
        """Put the run's time into every creation/content date and time the object carries (in place)."""
        date, time = DA(self.time.date()), TM(self.time.time().replace(microsecond=0))
        for date_keyword, time_keyword in _STAMPED:
            if date_keyword in dataset:
                setattr(dataset, date_keyword, date)
            if time_keyword in dataset:
                setattr(dataset, time_keyword, time)
        for equipment in dataset.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in equipment:
                equipment.ContributionDateTime = DT(self.time.replace(microsecond=0))


def _newest_source_time(images: tuple[Dataset, ...]) -> datetime.datetime:
    """The newest date/time the source images state (content, acquisition, series, study), else 1970-01-01."""
    found = []
    for ds in images:
        for date_keyword, time_keyword in _SOURCE_TIMES:
            date = str(ds.get(date_keyword) or "")
            if len(date) == 8 and date.isdigit():
                digits = "".join(c for c in str(ds.get(time_keyword) or "").split(".")[0] if c.isdigit())
                digits = (digits + "000000")[:6]
                try:
                    found.append(datetime.datetime.strptime(date + digits, "%Y%m%d%H%M%S"))
                except ValueError:
                    continue
                break
    return max(found, default=_EPOCH)
