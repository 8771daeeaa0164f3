"""Monitoring: real-world figures per model and period, and drift of inputs, outputs and outcomes."""

from node.monitor.drift import Alarm, Chart, DriftOptions, compute_drift, record_alarms
from node.monitor.figures import Figures, compute_figures
from node.monitor.periods import Period, PeriodKind

__all__ = ["Alarm", "Chart", "DriftOptions", "Figures", "Period", "PeriodKind", "compute_drift", "compute_figures",
           "record_alarms"]
