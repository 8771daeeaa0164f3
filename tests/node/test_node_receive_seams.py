"""The receiver's seams into pynetdicom (node.dicom.seams): each holds in the pinned library, a changed library
breaks them loudly, only the receiver installs them, and no other module reaches below pynetdicom's public API.

The seams' behaviour is tested where it is used: the reactor waits, the clock, the shared contexts, the file meta
and the remembering validators in test_node_receive.py; spooling, the server, the guard's reads and the
rejection over real associations in tests/integration/test_receive*.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom import valuerep
from pynetdicom import _config, dimse_messages, dul
from pynetdicom.transport import AssociationSocket

from node.dicom import chunked, seams

ROOT = Path(__file__).resolve().parents[2]
SEAMS_MODULE = ROOT / "node" / "dicom" / "seams.py"
PYNETDICOM = Path(pynetdicom.__file__).parent


@pytest.mark.parametrize("seam", seams.SEAMS)
def test_each_seam_holds_in_the_installed_libraries(seam: str) -> None:
    seams.verify((seam,))


def test_the_installed_pynetdicom_is_the_pinned_one() -> None:
    """The seams were written against the pinned version: a new one is read again before the pin moves."""
    pin = re.search(r'"pynetdicom==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None, "pynetdicom must stay pinned to one version (node.dicom.seams depends on its inside)"
    assert pynetdicom.__version__ == pin[1]
    assert pydicom.__version__.startswith("3.")


def _drop(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
    monkeypatch.delattr(owner, name)


@pytest.mark.parametrize("seam, change", [
    ("spooling", lambda mp: _drop(mp, dimse_messages, "NamedTemporaryFile")),
    ("spooling", lambda mp: _drop(mp, _config, "STORE_RECV_CHUNKED_DATASET")),
    ("transport", lambda mp: mp.setattr(AssociationSocket, "recv", lambda self, size, flags=0: bytearray())),
    ("validators", lambda mp: mp.setitem(_config.VALIDATORS, "UI", lambda value, strict: (True, ""))),
    ("validators", lambda mp: mp.setitem(valuerep.VALIDATORS, "UI", lambda value: (True, ""))),
    ("clock", lambda mp: mp.setattr(dul, "time", object())),
    ("reactor state", lambda mp: mp.setattr(dul.DULServiceProvider, "send_pdu", lambda self, p, q: None)),
])
def test_a_changed_library_breaks_its_seam_loudly_and_nothing_is_installed(seam: str, change,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    change(monkeypatch)
    with pytest.raises(seams.SeamBroken) as broken:
        seams.verify((seam,))
    assert broken.value.seam == seam and seam in str(broken.value)
    spool_file = getattr(dimse_messages, "NamedTemporaryFile", None)
    with pytest.raises(seams.SeamBroken):
        seams.install(chunked.SPOOLING)
    assert getattr(dimse_messages, "NamedTemporaryFile", None) is spool_file  # refused before any patch


_ONLY_THE_RECEIVER = """
import sys
from pathlib import Path
from node.config import DicomConfig, StorageConfig
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.dicom import seams
from node.dicom.scp import StorageSCP
from node.storage.store import InstanceStore
import pynetdicom.dimse_messages as dimse_messages, tempfile as tf
from pynetdicom import _config, dul

def pristine():
    return (not isinstance(dul.time, seams._Clock) and dimse_messages.NamedTemporaryFile is tf.NamedTemporaryFile
            and not _config.STORE_RECV_CHUNKED_DATASET and not hasattr(_config.VALIDATORS["UI"], "remembered"))

data = Path(sys.argv[1])
url = f"sqlite:///{data / 'node.db'}"
upgrade(url)
store = InstanceStore(StorageConfig(data_dir=data))
scp = StorageSCP(DicomConfig(host="127.0.0.1", port=11112), store, make_engine(url))
assert pristine(), "building the SCP (every role's Node.build) must not touch pynetdicom"
server = scp.start(port=0)
try:
    assert isinstance(dul.time, seams._Clock) and not pristine(), "the receiver's start installs the seams"
finally:
    server.shutdown()
print("ok")
"""


def test_the_seams_are_installed_by_the_receiver_alone(tmp_path: Path) -> None:
    """Every role builds the node (and its SCP); only the receiver role starts it, and only that installs the seams:
    a worker or delivery process runs pynetdicom as shipped."""
    done = subprocess.run([sys.executable, "-c", _ONLY_THE_RECEIVER, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "ok", done.stderr[-3000:]
    service = (ROOT / "node" / "service.py").read_text()
    assert service.count(".scp.start(") == 2  # the first receiver and its siblings, both under the receiver role


def _private_names_of_pynetdicom() -> tuple[set[str], set[str]]:
    """Names with a leading underscore pynetdicom defines, and the (plain) method names of its classes."""
    private, methods = set(), set()
    for path in PYNETDICOM.rglob("*.py"):
        if "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            if name and name.startswith("_") and not name.startswith("__"):
                private.add(name)
            if isinstance(node, ast.ClassDef):
                methods |= {f.name for f in node.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")
                            and not f.decorator_list}  # methods, not properties
        private |= {path.stem} if path.stem.startswith("_") and path.stem != "__init__" else set()
    return private, methods


def _reaches_below_pynetdicom(path: Path, private: set[str], methods: set[str]) -> list[str]:
    """Where ``path`` imports, reads or patches a private name of pynetdicom, patches pynetdicom or pydicom's
    validators, or subclasses a pynetdicom class."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    bound: set[str] = set()  # names this module bound to pynetdicom modules and objects
    own: set[str] = set()  # private names this module defines itself
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pynetdicom":
                    bound.add((alias.asname or alias.name).split(".")[0])
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(f"{path}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pynetdicom":
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if any(p.startswith("_") for p in (node.module or "").split(".")) or alias.name.startswith("_"):
                    found.append(f"{path}:{node.lineno}: imports {alias.name} from {node.module}")
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
            own.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            own.add(node.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if node.attr.startswith("_") and not node.attr.startswith("__") and node.attr in private \
                    and not on_self and node.attr not in own:
                found.append(f"{path}:{node.lineno}: reads {node.attr}")
            if node.attr == "VALIDATORS":
                found.append(f"{path}:{node.lineno}: uses a library's VALIDATORS table")
            if isinstance(node.ctx, ast.Store) and not on_self and (
                    (isinstance(node.value, ast.Name) and node.value.id in bound) or node.attr in methods):
                found.append(f"{path}:{node.lineno}: patches {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in bound:
            found.append(f"{path}:{node.lineno}: patches {node.args[0].id}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in bound or \
                        isinstance(base, ast.Attribute) and ast.unparse(base).split(".")[0] in bound:
                    found.append(f"{path}:{node.lineno}: subclasses {ast.unparse(base)}")
    return found


def test_no_module_but_the_seams_reaches_below_pynetdicom() -> None:
    private, methods = _private_names_of_pynetdicom()
    assert {"_config", "_kill_thread", "_idle_timer", "_data_set_file", "_transfer_syntax"} <= private
    sources = [p for folder in ("node", "detector") for p in sorted((ROOT / folder).rglob("*.py"))]
    found = [line for p in sources if p != SEAMS_MODULE for line in _reaches_below_pynetdicom(p, private, methods)]
    assert found == [], "only node/dicom/seams.py may work below pynetdicom's public API:\n" + "\n".join(found)
    # the scan sees what the seams module does
    seen = "\n".join(_reaches_below_pynetdicom(SEAMS_MODULE, private, methods))
    for what in ("imports _config", "reads _kill_thread", "reads _idle_timer", "patches dimse_messages.",
                 "subclasses ThreadedAssociationServer", "VALIDATORS", "patches sock.recv"):
        assert what in seen, what


def test_the_scan_sees_a_reach_written_anywhere_else() -> None:
    """A module outside the seams that read a private attribute, patched a module or subclassed is reported."""
    private, methods = _private_names_of_pynetdicom()
    with tempfile.NamedTemporaryFile("w", suffix=".py") as module:
        module.write("from pynetdicom import dul\nfrom pynetdicom.dul import DULServiceProvider\n\n"
                     "class Mine(DULServiceProvider):\n    pass\n\n"
                     "def f(provider):\n    provider._idle_timer.restart()\n    dul.time = None\n"
                     "    provider.send_pdu = print\n")
        module.flush()
        seen = "\n".join(_reaches_below_pynetdicom(Path(module.name), private, methods))
    assert "subclasses DULServiceProvider" in seen and "reads _idle_timer" in seen
    assert "patches dul.time" in seen and "patches provider.send_pdu" in seen
