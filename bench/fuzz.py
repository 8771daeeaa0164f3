"""Fuzz a live node: mutated data sets over real associations, malformed PDUs on raw connections, echo throughout.

Starts `ctnode serve` (SQLite, a temporary data directory) and runs --cases cases drawn from a seeded RNG:
  dataset - a real CT header (small pixel data) with bytes flipped, cut, inserted or truncated, sent as a
            C-STORE data set over a reused association: it must be answered with one of the node's statuses,
            and a Success must name a current instance row whose stored data set is byte-identical;
  pdu     - a raw connection sending a PDU header of random type and length and random bytes, then closing;
  pdata   - a P-DATA PDU with a lying length or PDV item inside an established association.
Every --echo-every cases, and at the end, a fresh association must answer C-ECHO. Ends with one line:
  cases=N crashes=C false_success=F echo_ok=0|1
(crashes: the node exited, or left a complete C-STORE unanswered; false_success: a Success not stored as sent).
"""

from __future__ import annotations

import argparse
import random
import socket
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node.dicom.status import StoreStatus  # noqa: E402
from tests.integration.dicom_client import associate, encode, send_bytes, send_raw  # noqa: E402
from tests.support import NodeProcess, dataset_bytes, dicom_files  # noqa: E402

ANSWERS = {int(s) for s in StoreStatus}


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(max(1, len(out)))
        op = rng.choice(("flip", "cut", "insert", "truncate", "length"))
        if op == "flip":
            out[at:at + 4] = rng.randbytes(rng.randint(1, 4))
        elif op == "cut":
            del out[at:at + rng.randint(1, 64)]
        elif op == "insert":
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == "truncate":
            del out[at:]
        else:  # an element length that lies: a 16- or 32-bit length field set to a random value
            out[at:at + 4] = struct.pack("<I", rng.choice((0xFFFFFFFF, 0xFFFF, rng.getrandbits(32))))
    return bytes(out) or b"\x00"


def stored_as_sent(db: Path, store: Path, sop_instance_uid: str, payload: bytes) -> bool:
    """Whether an indexed version of the instance holds exactly ``payload`` (a resend of an older one adds none)."""
    with sqlite3.connect(db) as conn:
        paths = [row[0] for row in conn.execute("SELECT path FROM instance WHERE sop_instance_uid = ?",
                                                (sop_instance_uid,))]
    return any((store / p).is_file() and dataset_bytes(store / p) == payload for p in paths)


def echo_ok(port: int) -> bool:
    """Whether a fresh association is accepted and answers C-ECHO (why not goes to stderr)."""
    try:
        with associate(port, calling_ae="ECHOSCU") as assoc:
            if not assoc.is_established:
                print(f"echo: association not established (rejected={assoc.is_rejected}, "
                      f"aborted={assoc.is_aborted})", file=sys.stderr)
                return False
            status = assoc.send_c_echo().get("Status")
            if status != 0x0000:
                print(f"echo: status {status}", file=sys.stderr)
            return status == 0x0000
    except Exception as exc:
        print(f"echo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False


def raw_pdu(port: int, rng: random.Random) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        pdu_type = rng.choice((0x01, 0x02, 0x04, 0x05, 0x07, rng.randrange(256)))
        length = rng.choice((0, 4, 68, rng.getrandbits(16), rng.getrandbits(32)))
        try:  # the node may close the connection before everything was sent: that is an answer too
            sock.sendall(struct.pack(">BBL", pdu_type, 0, length) + rng.randbytes(rng.randint(0, 512)))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--echo-every", type=int, default=100)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "ct" / "head_ge_patient")
    parser.add_argument("--quick", action="store_true", help="300 cases, an echo every 50 (CI)")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.echo_every = 300, 50
    rng = random.Random(args.seed)

    ds = pydicom.dcmread(dicom_files(args.data)[0])
    ds.PixelData, ds.Rows, ds.Columns = ds.PixelData[:4096], 32, 64
    seed_payload, sop = encode(ds), str(ds.SOPInstanceUID)

    crashes = false_success = 0
    echo_good = True
    counts = {"dataset": 0, "pdu": 0, "pdata": 0}
    with tempfile.TemporaryDirectory(prefix="ctnode-fuzz-") as tmp:
        work = Path(tmp)
        node = NodeProcess(work, f"sqlite:///{work / 'ctnode.sqlite'}", pending_timeout_s=2).start()
        db, store = work / "ctnode.sqlite", work / "store"
        assoc_cm = None
        assoc = None
        try:
            for case in range(1, args.cases + 1):
                kind = rng.choices(("dataset", "pdu", "pdata"), weights=(75, 20, 5))[0]
                counts[kind] += 1
                if kind == "dataset":
                    if assoc is None or not assoc.is_established:
                        if assoc_cm is not None:
                            assoc_cm.__exit__(None, None, None)
                        assoc_cm = associate(node.port)
                        assoc = assoc_cm.__enter__()
                        assoc.dimse_timeout = 60
                    payload = mutate(seed_payload, rng)
                    command_uid = sop if rng.random() < 0.8 else pydicom.uid.generate_uid()
                    try:
                        status = send_raw(assoc, payload, command_uid, message_id=case % 65536)
                    except AssertionError:
                        crashes += 1  # a complete, well-framed C-STORE left unanswered
                        print(f"case {case}: no C-STORE response", file=sys.stderr)
                        assoc = None
                        continue
                    if status not in ANSWERS:
                        print(f"case {case}: unexpected status 0x{status:04X}", file=sys.stderr)
                    if status == StoreStatus.SUCCESS:
                        if not stored_as_sent(db, store, command_uid, payload):
                            false_success += 1
                            print(f"case {case}: Success but not stored as sent", file=sys.stderr)
                elif kind == "pdu":
                    raw_pdu(node.port, rng)
                else:
                    with associate(node.port) as victim:
                        if victim.is_established:
                            header = struct.pack(">BBL", 0x04, 0, rng.choice((6, 100, rng.getrandbits(32))))
                            item = struct.pack(">LBB", rng.getrandbits(32), 1, rng.randrange(4))
                            send_bytes(victim, header + item + rng.randbytes(rng.randint(0, 64)))
                            time.sleep(0.01)
                if node.process is not None and node.process.poll() is not None:
                    crashes += 1
                    print(f"case {case}: the node exited with {node.process.returncode}", file=sys.stderr)
                    break
                if case % args.echo_every == 0:
                    if not echo_ok(node.port):
                        echo_good = False
                        print("\n".join(line for line in node.log().splitlines()[-400:]
                                        if "rejected" in line)[-2000:], file=sys.stderr)
                    print(f"{case} cases {counts} crashes={crashes} false_success={false_success}", file=sys.stderr)
            echo_good &= echo_ok(node.port)
        finally:
            if assoc_cm is not None:
                assoc_cm.__exit__(None, None, None)
            stopped = node.stop()
            if stopped not in (0, None):
                crashes += 1
                print(f"unclean node shutdown: {stopped}", file=sys.stderr)
    print(f"cases={sum(counts.values())} crashes={crashes} false_success={false_success} echo_ok={int(echo_good)}")


if __name__ == "__main__":
    main()
