"""The code base's layering, read from its import statements: data flows one way (receive -> store -> stabilize ->
detect -> report -> deliver), the detector knows nothing of the node, and no package imports one that imports it
back."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support import REPO

# Packages beneath every stage: they import no stage.
FOUNDATIONS = ("node.events", "node.config", "node.logging", "node.db", "node.storage", "node.loops")
# A stage imports none of the stages that come after it (the detection worker, which hands a run on to the report
# and delivery stages, is the one place that runs them in order).
LATER = {
    "node.dicom": ("node.pipeline", "node.reports", "node.delivery", "node.notify", "node.feedback", "node.monitor"),
    "node.reports": ("node.dicom", "node.pipeline", "node.delivery", "node.notify", "node.feedback", "node.monitor"),
    "node.delivery": ("node.dicom", "node.pipeline", "node.reports", "node.notify", "node.feedback", "node.monitor"),
}
STAGES = ("node.dicom", "node.hl7", "node.pipeline", "node.reports", "node.delivery", "node.notify", "node.feedback",
          "node.labels", "node.monitor", "node.web", "node.service", "node.cli")


def _package(module: str) -> str | None:
    """node.<x> or detector.<x> for a module of ours, else None."""
    parts = module.split(".")
    if parts[0] not in ("node", "detector") or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def package_imports() -> dict[str, set[str]]:
    """Which of our packages each of our packages imports (absolute imports; relative ones stay inside a package)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for root in ("node", "detector"):
        for path in (REPO / root).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            source = _package(module.removesuffix(".__init__"))
            if source is None:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                for name in names:
                    target = _package(name)
                    if target is not None and target != source:
                        graph[source].add(target)
    return graph


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = package_imports()
    assert "node.pipeline" in found and "detector.infer" in found, "the scan reads the code base"
    return found


def test_the_detector_imports_nothing_of_the_node(graph: dict[str, set[str]]) -> None:
    wrong = {src: sorted(t for t in targets if t.startswith("node.")) for src, targets in graph.items()
             if src.startswith("detector.")}
    assert not {src: t for src, t in wrong.items() if t}


def test_foundations_import_no_stage(graph: dict[str, set[str]]) -> None:
    wrong = {src: sorted(graph[src] & set(STAGES)) for src in FOUNDATIONS}
    assert not {src: t for src, t in wrong.items() if t}


def test_no_stage_imports_a_later_one(graph: dict[str, set[str]]) -> None:
    wrong = {src: sorted(graph[src] & set(later)) for src, later in LATER.items()}
    assert not {src: t for src, t in wrong.items() if t}


def test_no_package_imports_one_that_imports_it_back(graph: dict[str, set[str]]) -> None:
    def cycle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            here, path = stack.pop()
            for nxt in graph.get(here, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
