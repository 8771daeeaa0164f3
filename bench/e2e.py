"""End-to-end turnaround: Orthanc sends a CT series to ctnode, ctnode sends the SR back; how long it takes.

For the 141-slice 1 mm head series (head_phantom_philips_study) and the 64-slice chest series, each
repeat writes the series with fresh UIDs (a new study), uploads it to Orthanc and has Orthanc send
it to a running `ctnode serve` (SQLite, one worker process, fast path on) over one association. The
run's audit record gives the stages:

  quiet      last instance acknowledged -> study ready (what study completion waited; reported alone)
  queue      ready -> claimed by the worker
  inference  detection on the whole series
  report     SR and Secondary Captures built and written
  delivery   reports built -> the SR acknowledged by Orthanc

``total`` is ready -> SR acknowledged (turnaround without the quiet time). ``notify`` is the triage
notification's time: last image received -> the HL7 AA of a real MLLP RIS (python-hl7's server; the channel
told of every decision, so that each study is notified). Prints the per-stage medians over --repeats, and ends
with, for the head series: ``median_s=S quiet_s=Q notify_s=N p95_notify_s=P`` (p95 over the repeats).
``--quick`` (CI): one run of the chest series, no warm-up round, the same last line for it.

Measured 2026-12-07 on this 2-core AMD EPYC development machine (load average below 1),
``--targets head --repeats 5``: quiet 0.10, queue 0.20, inference 1.83, report 1.47, delivery 0.28, total 3.74 s;
``median_s=3.74 quiet_s=0.10 notify_s=2.30 p95_notify_s=2.44`` (triage target: p95 <= 10 s to an HL7 AA on this
CPU: met; the notification leaves before the report objects are built).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.loop import (  # noqa: E402
    CHEST,
    node_sections,
    orthanc_study,
    orthanc_with_node,
    send_to_node,
    upload,
    wait_for_srs,
    write_study,
)
from tests.integration.ris import Ris  # noqa: E402
from tests.support import NodeProcess, free_port  # noqa: E402

SERIES = {"head": "head_phantom_philips_study", "chest": CHEST}
STAGES = ("quiet", "queue", "inference", "report", "delivery", "total", "notify")


def _stages(record: dict) -> dict[str, float]:  # type: ignore[type-arg]
    durations = record["durations_s"]
    total = durations["turnaround"] - durations["stabilize"]
    return {"quiet": durations["stabilize"], "queue": durations["queue"], "inference": durations["inference"],
            "report": durations["report"], "delivery": durations["delivery"], "total": total,
            "notify": record["notifications"][0]["notify_s"]}


def _p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def _sections(orthanc: object, ris_port: int) -> dict:  # type: ignore[type-arg]
    """The node's sections: results back to Orthanc, every decision told to the RIS over HL7."""
    from node.config import PipelineConfig

    sections = node_sections(orthanc)  # type: ignore[arg-type]
    sections["notify"] = {"channels": [{"name": "ris", "kind": "hl7", "host": "127.0.0.1", "port": ris_port,
                                        "decisions": ["suspected_positive", "negative", "not_analysed"]}]}
    sections["pipeline"]["routes"] = [{**route.model_dump(exclude={"name"}), "notify": ["ris"]}
                                      for route in PipelineConfig().routes]
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", nargs="+", default=["head", "chest"], choices=sorted(SERIES))
    parser.add_argument("--quick", action="store_true", help="one chest run, no warm-up (CI)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.targets = 1, ["chest"]

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    console = Console(stderr=True)
    measured: dict[str, list[dict[str, float]]] = {target: [] for target in args.targets}
    with tempfile.TemporaryDirectory(prefix="ctnode-e2e-") as tmp:
        root = Path(tmp)
        node_port = free_port()
        orthanc = orthanc_with_node(root / "orthanc", node_port)
        ris = Ris(free_port()).start()
        # The node logs at its default level, INFO, as deployed: two lines per association, and the receivers'
        # "listening" lines that NodeProcess waits for.
        node = NodeProcess(root / "node", "", port=node_port,  # "": the embedded SQLite default
                           allowed=[{"ae_title": orthanc.ae_title, "host": "127.0.0.1"}], sections=_sections(orthanc, ris.port))
        try:
            node.start()
            first = 1 if args.quick else 0  # round 0 warms up
            rounds = [(r, t) for r in range(first, args.repeats + 1) for t in args.targets]
            for repeat, target in track(rounds, description="e2e runs", console=console):
                study = write_study(SERIES[target], root / f"{target}-{repeat}", f"bench-{target}-{repeat}")
                upload(orthanc, study.files)
                send_to_node(orthanc, [orthanc_study(orthanc, study.study_instance_uid)])
                wait_for_srs(orthanc, study.study_instance_uid, 1, 600, node.log)
                ris.wait_for(len(rounds[:rounds.index((repeat, target)) + 1]), timeout_s=600)
                runs = json.loads(node.cli("runs", "list", "--study", study.study_instance_uid, "--json").stdout)
                record = json.loads(node.cli("runs", "show", str(runs[0]["id"]), "--json").stdout)
                while record["notifications"][0]["notify_s"] is None:  # the ACK is recorded just after it is read
                    record = json.loads(node.cli("runs", "show", str(runs[0]["id"]), "--json").stdout)
                if repeat > 0:
                    measured[target].append(_stages(record))
        finally:
            node.stop()
            orthanc.stop()
            ris.stop()

    table = Table("series", "slices", *STAGES, title=f"ctnode end to end, median of {args.repeats} (seconds)")
    medians = {t: {s: statistics.median(m[s] for m in runs) for s in STAGES} for t, runs in measured.items()}
    slices = {"head": 141, "chest": 64}
    for target, stage in medians.items():
        table.add_row(target, str(slices[target]), *(f"{stage[s]:.2f}" for s in STAGES))
    console.print(table)
    shown = "head" if "head" in medians else "chest"
    head = medians.get(shown)
    if head is not None:
        p95 = _p95([m["notify"] for m in measured[shown]])
        print(f"median_s={head['total']:.2f} quiet_s={head['quiet']:.2f} notify_s={head['notify']:.2f} "
              f"p95_notify_s={p95:.2f}")


if __name__ == "__main__":
    main()
