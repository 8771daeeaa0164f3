"""Ingest benchmark: ctnode (durable) vs a bare pynetdicom SCP vs Orthanc, same client, same data, one run.

Sends N real 512x512 CT instances (copies of ../shared/ct/head_ge_patient with fresh UIDs) with DCMTK
storescu over one association and over 4 concurrent associations, to:
  ctnode  - fsync + rename + committed SQLite (WAL, synchronous=FULL) row before each Success,
            with --processes receiver processes sharing the port (default: the node's default, 2);
  bare    - pynetdicom SCP writing event.encoded_dataset() to a file, no fsync, no database;
  orthanc - Debian's Orthanc with default storage.
Prints instances/s (median of --repeats) and ends with:
  single_vs_bare=R1 multi_vs_bare_multi=R2 vs_orthanc=R3 multi_vs_orthanc_multi=R4
(ctnode over the bare SCP at 1 and at 4 associations, over Orthanc at 1 and at 4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node.config import DicomConfig  # noqa: E402
from tests.integration.orthanc import Orthanc  # noqa: E402
from tests.support import NodeProcess, dicom_files, free_port, wait_for_port  # noqa: E402

MAX_PDU = 65536


def make_instances(source: Path, count: int, out: Path) -> list[Path]:
    """``count`` distinct instances (new Study/Series/SOP UIDs) cycling through the real slices."""
    slices = [pydicom.dcmread(p) for p in dicom_files(source)]
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        ds = slices[i % len(slices)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, groups: list[list[Path]], called_ae: str) -> float:
    """Run one storescu per group concurrently (one association each); returns the wall time in seconds."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port),
                               *map(str, group)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for group in groups]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def bare_scp(port: int, out: Path) -> None:
    """The anchor: pynetdicom's SCP writing the encoded bytes, nothing else."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from node.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES

    counter = iter(range(10**9))

    def on_store(event: evt.Event) -> int:
        with open(out / f"{next(counter)}.dcm", "wb") as fh:
            fh.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="CTNODE")
    ae.maximum_pdu_size = MAX_PDU
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)])


class Receiver:
    """A receiver under test: started fresh (empty storage) before every measured send."""

    def __init__(self, name: str, start: Callable[[Path], tuple[int, Callable[[], None]]], called_ae: str) -> None:
        self.name, self._start, self.called_ae = name, start, called_ae

    def measure(self, files: list[Path], associations: int, work: Path) -> float:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        port, stop = self._start(work)
        try:
            groups = [files[i::associations] for i in range(associations)]
            seconds = send(port, groups, self.called_ae)
        finally:
            stop()
        return len(files) / seconds


def ctnode_starter(processes: int, postgres: str | None = None) -> Callable[[Path], tuple[int, Callable[[], None]]]:
    """ctnode on a fresh SQLite file, or (``postgres``: an admin URL) on a fresh PostgreSQL database each time."""
    def start(work: Path) -> tuple[int, Callable[[], None]]:
        if postgres is None:
            node = NodeProcess(work, f"sqlite:///{work / 'ctnode.sqlite'}", max_pdu_bytes=MAX_PDU,
                               processes=processes).start()
            return node.port, node.stop
        import uuid

        import psycopg

        name = f"ctnode_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        node = NodeProcess(work, postgres.rsplit("/", 1)[0] + f"/{name}", max_pdu_bytes=MAX_PDU,
                           processes=processes).start()

        def stop() -> None:
            node.stop()
            with psycopg.connect(postgres, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        return node.port, stop

    return start


def start_bare(work: Path) -> tuple[int, Callable[[], None]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare-scp", str(port), str(work)])
    wait_for_port(port, process=proc)
    return port, lambda: (proc.terminate(), proc.wait())


def start_orthanc(work: Path) -> tuple[int, Callable[[], None]]:
    server = Orthanc(work).start()
    return server.dicom_port, server.stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "ct" / "head_ge_patient")
    parser.add_argument("--skip-orthanc", action="store_true")
    parser.add_argument("--processes", type=int, default=DicomConfig.model_fields["processes"].default,
                        help="ctnode receiver processes (dicom.processes; default: the node's default)")
    parser.add_argument("--postgres", metavar="ADMIN_URL",
                        help="ctnode on PostgreSQL (a fresh database per run, created with this URL) instead of SQLite")
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="20 instances, one repeat (CI)")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.repeats = 20, 1
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), Path(args.bare_scp[1]))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    receivers = [Receiver("ctnode", ctnode_starter(args.processes, args.postgres), "CTNODE"),
                 Receiver("bare pynetdicom", start_bare, "CTNODE")]
    if not args.skip_orthanc:
        receivers.append(Receiver("orthanc", start_orthanc, "ORTHANC"))
    with tempfile.TemporaryDirectory(prefix="ctnode-bench-", dir=REPO / "var" if (REPO / "var").exists() else None) as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        files = make_instances(args.data, args.instances, root / "data")
        rates: dict[tuple[str, int], list[float]] = {}
        with console.status("measuring") as status:
            for repeat in range(args.repeats):
                for associations in (1, 4):
                    for receiver in receivers:  # interleaved, so drift hits every receiver alike
                        status.update(f"repeat {repeat + 1}/{args.repeats}: {receiver.name} x{associations}")
                        rate = receiver.measure(files, associations, root / "work")
                        rates.setdefault((receiver.name, associations), []).append(rate)
    median = {key: statistics.median(values) for key, values in rates.items()}
    table = Table("receiver", "associations", "instances/s (median)", "runs",
                  title=f"{args.instances} x 512x512 CT, ctnode with {args.processes} receiver process(es)")
    for (name, associations), values in sorted(rates.items()):
        table.add_row(name, str(associations), f"{median[(name, associations)]:.1f}",
                      " ".join(f"{v:.0f}" for v in values))
    console.print(table)
    single_vs_bare = median[("ctnode", 1)] / median[("bare pynetdicom", 1)]
    multi_vs_single = median[("ctnode", 4)] / median[("ctnode", 1)]
    figures = {"single_vs_bare": single_vs_bare, "multi_vs_single": multi_vs_single,
               "bare_multi_vs_single": median[("bare pynetdicom", 4)] / median[("bare pynetdicom", 1)]}
    if not args.skip_orthanc:
        figures["vs_orthanc"] = median[("ctnode", 1)] / median[("orthanc", 1)]
        figures["multi_vs_orthanc_multi"] = median[("ctnode", 4)] / median[("orthanc", 4)]
    console.print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    multi_vs_bare_multi = median[("ctnode", 4)] / median[("bare pynetdicom", 4)]
    vs_orthanc = f"{figures['vs_orthanc']:.2f}" if "vs_orthanc" in figures else "nan"
    multi_vs_orthanc = f"{figures['multi_vs_orthanc_multi']:.2f}" if "vs_orthanc" in figures else "nan"
    print(f"single_vs_bare={single_vs_bare:.2f} multi_vs_bare_multi={multi_vs_bare_multi:.2f} "
          f"vs_orthanc={vs_orthanc} multi_vs_orthanc_multi={multi_vs_orthanc}")


if __name__ == "__main__":
    main()
