"""Delivery internals: backoff, config, contexts, status judgement, the outbox state machine, routing, real SCP replies."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from sqlalchemy import Engine, insert, select

from node.config import DeliveryConfig, Destination
from node.db.schema import Association, AuditEvent, Delivery, Instance, Series, Study
from node.delivery import destinations_for_study, enqueue, get_delivery, requeue
from node.delivery.backoff import retry_delay_s
from node.delivery.claims import AttemptResult, Claimed, claim, record_attempt
from node.delivery.destination_worker import DestinationWorker
from node.delivery.scu import judge, presentation_contexts
from node.events import AttemptOutcome, AuditKind, DeliveryState
from tests.support import free_port


def test_backoff_doubles_up_to_the_cap_and_jitter_stays_in_bounds():
    exact = DeliveryConfig(backoff_initial_s=2, backoff_max_s=50, backoff_jitter=0)
    assert [retry_delay_s(exact, n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 50, 50]
    assert retry_delay_s(exact, 10_000) == 50
    jittered = DeliveryConfig(backoff_initial_s=10, backoff_max_s=1000, backoff_jitter=0.5)
    rng = random.Random(7)
    delays = [retry_delay_s(jittered, 3, rng) for _ in range(500)]
    assert 20 <= min(delays) < 25 and 55 < max(delays) <= 60, "40 s scaled by 1 +/- 0.5"
    assert len(set(delays)) > 400, "retries spread out"
    with pytest.raises(ValueError, match="counts from 1"):
        retry_delay_s(exact, 0)


@pytest.mark.parametrize(("values", "needle"), [
    ({"reply_to": {"ORTHANC": "nowhere"}}, "nowhere"),
    ({"default_destinations": ["nowhere"]}, "nowhere"),
    ({"destinations": [{"name": "a", "ae_title": "A", "host": "h", "port": 104}] * 2}, "unique"),
    ({"backoff_initial_s": 60, "backoff_max_s": 10}, "backoff_max_s"),
    ({"destinations": [{"name": "a", "ae_title": "BAD\\AE", "host": "h", "port": 104}]}, "AE title"),
])
def test_delivery_config_refuses_inconsistent_values(values: dict, needle: str):
    with pytest.raises(ValidationError, match=needle):
        DeliveryConfig(**values)


def _claimed(sop_class: str, syntax: str) -> Claimed:
    return Claimed(1, Path("/nowhere"), sop_class, generate_uid(), generate_uid(), syntax, 0)


def test_contexts_per_sop_class_offer_the_objects_own_syntax_then_explicit_and_implicit():
    contexts = presentation_contexts([
        _claimed("1.2.840.10008.5.1.4.1.1.88.34", ExplicitVRLittleEndian),
        _claimed(SecondaryCaptureImageStorage, ImplicitVRLittleEndian),
        _claimed(SecondaryCaptureImageStorage, JPEGLSLossless),
    ])
    assert [(c.abstract_syntax, c.transfer_syntax) for c in contexts] == [
        ("1.2.840.10008.5.1.4.1.1.88.34", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (SecondaryCaptureImageStorage, [ImplicitVRLittleEndian, JPEGLSLossless, ExplicitVRLittleEndian]),
    ]


@pytest.mark.parametrize(("status", "outcome"), [
    (0x0000, AttemptOutcome.SUCCESS), (0xB000, AttemptOutcome.WARNING), (0xB007, AttemptOutcome.WARNING),
    (0xA700, AttemptOutcome.FAILURE), (0xC000, AttemptOutcome.FAILURE), (0x0122, AttemptOutcome.FAILURE),
])
def test_every_response_status_is_judged(status: int, outcome: AttemptOutcome):
    result = judge(status)
    assert result.outcome is outcome and result.status == status
    assert (result.error is None) == (outcome is AttemptOutcome.SUCCESS)


def write_object(folder: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    """A small valid Secondary Capture file, as the report stage writes them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "OT", "unit-test", "Test^Delivery"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _audits(engine: Engine, kind: AuditKind) -> list[AuditEvent]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEvent).where(AuditEvent.kind == str(kind))).all())


def test_enqueue_is_one_row_per_object_and_destination_and_idempotent(engine: Engine, tmp_path: Path):
    path = write_object(tmp_path)
    ids = enqueue(engine, path, ["pacs", "archive", "pacs"], run_id=42)
    assert len(ids) == 2 and enqueue(engine, path, ["archive", "pacs"], run_id=42) == ids[::-1]
    row = get_delivery(engine, ids[0])
    assert row is not None and row.destination == "pacs" and row.run_id == 42 and row.path == str(path.resolve())
    assert (row.state, row.attempts, row.sop_class_uid, row.transfer_syntax_uid) == (
        DeliveryState.PENDING, 0, SecondaryCaptureImageStorage, ExplicitVRLittleEndian)


def test_outbox_state_machine_leases_backoff_dead_letter_requeue_and_warning(engine: Engine, tmp_path: Path):
    config = DeliveryConfig(max_attempts=2, backoff_initial_s=3600, backoff_max_s=7200)
    failure = AttemptResult(AttemptOutcome.FAILURE, 0xA700, "failure status 0xA700")
    [first] = enqueue(engine, write_object(tmp_path), ["pacs"], run_id=1)

    held = claim(engine, "pacs", 10, lease_s=60)
    assert [i.id for i in held.items] == [first]
    assert claim(engine, "pacs", 10, lease_s=60).items == (), "a held row is not claimed twice"
    assert record_attempt(engine, "pacs", held, held.items[0], failure, config) is DeliveryState.PENDING
    assert claim(engine, "pacs", 10, lease_s=60).items == (), "not due before its backoff ends"
    with engine.begin() as conn:  # the backoff has passed
        conn.execute(Delivery.__table__.update().values(next_attempt_at=Delivery.created_at))

    lapsed = claim(engine, "pacs", 10, lease_s=0)  # its sender dies: the lease runs out at once
    taken_over = claim(engine, "pacs", 10, lease_s=60)
    assert [i.id for i in taken_over.items] == [first] and taken_over.items[0].attempts == 1
    record_attempt(engine, "pacs", lapsed, lapsed.items[0], failure, config)
    row = get_delivery(engine, first)
    assert row is not None and row.attempts == 1, "a sender whose lease lapsed changes nothing"
    assert record_attempt(engine, "pacs", taken_over, taken_over.items[0], failure, config) is DeliveryState.DEAD
    row = get_delivery(engine, first)
    assert row is not None and (row.state, row.attempts, row.last_status) == (DeliveryState.DEAD, 2, 0xA700)
    assert len(row.attempt_log) == 3 and [e.sop_instance_uid for e in _audits(engine, AuditKind.DELIVERY_DEAD_LETTER)] \
        == [row.sop_instance_uid]

    assert requeue(engine, first) and not requeue(engine, first) and not requeue(engine, 999)
    again = claim(engine, "pacs", 10, lease_s=60)
    assert [(i.id, i.attempts) for i in again.items] == [(first, 0)]
    warning = AttemptResult(AttemptOutcome.WARNING, 0xB000, "warning status 0xB000")
    assert record_attempt(engine, "pacs", again, again.items[0], warning, config) is DeliveryState.DELIVERED
    row = get_delivery(engine, first)
    assert row is not None and row.acknowledged_at is not None and row.last_status == 0xB000
    assert len(_audits(engine, AuditKind.DELIVERY_REQUEUED)) == 1 and len(_audits(engine, AuditKind.DELIVERY_WARNING)) == 1


def test_reply_to_the_sender_and_default_destinations(engine: Engine):
    study_uid = generate_uid()
    with engine.begin() as conn:
        study = conn.execute(insert(Study).values(study_instance_uid=study_uid).returning(Study.id)).scalar_one()
        series = conn.execute(insert(Series).values(study_id=study, series_instance_uid=generate_uid())
                              .returning(Series.id)).scalar_one()
        for n, calling_ae in enumerate(["ORTHANC", "MODALITY", "ORTHANC"]):
            association = conn.execute(insert(Association).values(
                calling_ae=calling_ae, called_ae="CTNODE", peer_host="127.0.0.1", peer_port=1000 + n, outcome="released",
            ).returning(Association.id)).scalar_one()
            conn.execute(insert(Instance).values(
                series_id=series, association_id=association, sop_instance_uid=generate_uid(),
                sop_class_uid=SecondaryCaptureImageStorage, transfer_syntax_uid=ExplicitVRLittleEndian,
                sha256=f"{n:064d}", size_bytes=1, path=f"{n}.dcm"))
    names = [{"name": n, "ae_title": n.upper(), "host": "127.0.0.1", "port": 104} for n in ("pacs", "archive", "viewer")]
    config = DeliveryConfig(destinations=names, reply_to={"ORTHANC": "pacs", "OTHER": "viewer"},
                            default_destinations=["archive"])
    assert destinations_for_study(engine, config, study_uid) == ["archive", "pacs"]
    assert destinations_for_study(engine, config, generate_uid()) == ["archive"]


def test_failure_status_from_a_real_node_is_retried(engine: Engine, make_node, tmp_path: Path):
    node = make_node(min_free_bytes=2**62, allowed=[{"ae_title": "CTNODE"}])  # no disk is that big: 0xA700
    [delivery_id] = enqueue(engine, write_object(tmp_path / "out"), ["node"], run_id=None)
    destination = Destination(name="node", ae_title=node.ae_title, host="127.0.0.1", port=node.port)
    worker = DestinationWorker(engine, destination, DeliveryConfig(backoff_initial_s=3600, backoff_max_s=3600),
                               "CTNODE", threading.Event())
    assert worker.run_once() == 1
    row = get_delivery(engine, delivery_id)
    assert row is not None and (row.state, row.attempts, row.last_status) == (DeliveryState.PENDING, 1, 0xA700)
    assert worker.run_once() == 0, "waits for its backoff"


@pytest.fixture
def warning_scp() -> Iterator[tuple[int, list[tuple[str, str]], list[str]]]:
    """A pynetdicom SCP that stores nothing and answers Warning 0xB000, in Implicit VR LE only.

    Orthanc never answers Warning, so this fault needs a scripted peer.
    """
    received: list[tuple[str, str]] = []
    associations: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append((str(event.request.AffectedSOPInstanceUID), str(event.context.transfer_syntax)))
        return 0xB000

    ae = AE(ae_title="WARNS")
    ae.add_supported_context(SecondaryCaptureImageStorage, ImplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, lambda event: associations.append(event.assoc.name))])
    yield port, received, associations
    server.shutdown()


def test_one_association_per_batch_warning_delivered_and_audited_implicit_fallback(
    engine: Engine, warning_scp: tuple[int, list[tuple[str, str]], list[str]], tmp_path: Path
):
    port, received, associations = warning_scp
    paths = [write_object(tmp_path) for _ in range(3)]
    ids = [i for p in paths for i in enqueue(engine, p, ["warns"], run_id=7)]
    destination = Destination(name="warns", ae_title="WARNS", host="127.0.0.1", port=port)
    worker = DestinationWorker(engine, destination, DeliveryConfig(), "CTNODE", threading.Event())
    assert worker.run_once() == 3
    assert len(associations) == 1, "one association carries the whole batch"
    assert sorted(uid for uid, _ in received) == sorted(p.stem for p in paths)
    assert {syntax for _, syntax in received} == {ImplicitVRLittleEndian}
    for delivery_id in ids:
        row = get_delivery(engine, delivery_id)
        assert row is not None and (row.state, row.last_status) == (DeliveryState.DELIVERED, 0xB000)
    assert sorted(e.sop_instance_uid for e in _audits(engine, AuditKind.DELIVERY_WARNING)) == sorted(p.stem for p in paths)
