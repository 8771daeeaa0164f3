"""Open associations counted across a node's receiver processes, for the node-wide and per-AE limits.

The first receiver creates the counts in shared memory and hands each sibling a seat (a row of its own).
A process writes only its own row, and a seat given out again (a sibling restarted after dying) starts
empty, so a process that died leaves nothing counted. Admission counts the association in first, then sums
every row: two processes admitting the last place at the same moment may both refuse it (a transient
rejection the sender retries), never both accept it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
from collections.abc import Iterable
from typing import Any


class Occupancy:
    """Shared counts of open associations: in all, and per calling AE that has a limit."""

    def __init__(self, seats: int, limited_aes: Iterable[str]) -> None:
        self.columns = {ae: column for column, ae in enumerate(sorted(set(limited_aes)), start=1)}
        self.width = 1 + len(self.columns)
        self.cells = multiprocessing.get_context("spawn").RawArray(ctypes.c_int, seats * self.width)

    def seat(self, index: int) -> Seat:
        """Seat ``index`` (0: the first receiver), emptied: give it to a process that is starting."""
        return Seat(self, index)


class Seat:
    """One receiver process's row of an Occupancy (picklable into a spawned process)."""

    def __init__(self, occupancy: Occupancy, index: int) -> None:
        self._occupancy, self._index = occupancy, index
        self._lock = threading.Lock()
        start = index * occupancy.width
        for cell in range(start, start + occupancy.width):
            occupancy.cells[cell] = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"occupancy": self._occupancy, "index": self._index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._occupancy, self._index = state["occupancy"], state["index"]
        self._lock = threading.Lock()

    def enter(self, calling_ae: str) -> tuple[int, int]:
        """Count an association of ``calling_ae`` in; returns the node's open associations before it, in all
        and by that AE (0 for an AE without a limit)."""
        column = self._step(calling_ae, 1)
        cells, width = self._occupancy.cells, self._occupancy.width
        total = sum(cells[row] for row in range(0, len(cells), width)) - 1
        held = sum(cells[row + column] for row in range(0, len(cells), width)) - 1 if column is not None else 0
        return total, held

    def leave(self, calling_ae: str) -> None:
        """Count an association that ``enter`` counted out again."""
        self._step(calling_ae, -1)

    def _step(self, calling_ae: str, step: int) -> int | None:
        """Add ``step`` to this row's total and to the AE's column; returns that column (None: no limit)."""
        occupancy = self._occupancy
        column = occupancy.columns.get(calling_ae)
        start = self._index * occupancy.width
        with self._lock:  # this process's threads; no other process writes this row
            occupancy.cells[start] += step
            if column is not None:
                occupancy.cells[start + column] += step
        return column
