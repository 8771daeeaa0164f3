"""Every benchmark's --quick mode as CI runs it: it exits 0 and ends with its figures line, so none breaks silently.

bench/site.py and bench/lifecycle.py have their own (tests/bench/test_site_quick.py, test_lifecycle_quick.py);
bench/gpu_check.sh (with bench/gpu_dcn.py) is for a lent CUDA machine, its CPU dry run takes about 8 minutes here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.support import REPO, require, require_ct, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NUMBER = r"[0-9.]+|nan"
QUICK = {
    "ablation": (rf"plain_cpm=({NUMBER}) fpn_cpm=({NUMBER}) fpn_dcn_cpm=({NUMBER}) fpn_dcn_ce_cpm=({NUMBER})", ()),
    "ops": (rf"fwd_vs_conv=({NUMBER}) fwdbwd_vs_conv=({NUMBER}) speedup_vs_reference=({NUMBER})", ()),
    "detect": (rf"s_per_slice=({NUMBER}) peak_rss_gb=({NUMBER}) dcn_vs_plain=({NUMBER}) "
               rf"chest_s_per_slice=({NUMBER}) chest_second_stage_share=({NUMBER})", ()),
    "e2e": (rf"median_s=({NUMBER}) quiet_s=({NUMBER}) notify_s=({NUMBER}) p95_notify_s=({NUMBER})", ("Orthanc",)),
    "fragments": (rf"lesions=2 sensitivity_before=({NUMBER}) sensitivity_after=({NUMBER}) per_lesion_before=({NUMBER}) "
                  rf"per_lesion_after=({NUMBER}) fp_before=({NUMBER}) fp_after=({NUMBER})", ()),
    "fuzz": (r"cases=300 crashes=0 false_success=0 echo_ok=1", ()),
    "ingest": (rf"single_vs_bare=({NUMBER}) multi_vs_bare_multi=({NUMBER}) vs_orthanc=({NUMBER}) "
               rf"multi_vs_orthanc_multi=({NUMBER})", ("storescu", "Orthanc")),
    "notify": (rf"notifications=6 acked=6 lost=0 duplicates=0 p95_notify_s=({NUMBER})", ("storescu",)),
    "shadow": (rf"studies=2 live_alone_s=({NUMBER}) live_with_shadow_s=({NUMBER}) ratio=({NUMBER}) shadow_yields=\d+ "
               r"shadows_done=2", ()),
    "soak": (r"studies=2 runs_done=\d+ lost=0 duplicated_deliveries=0 kills=2 notified=2 notify_lost=0 "
             r"notify_duplicates=0", ("storescu", "Orthanc")),
}
DATA = {"ablation": ("chest_lung_pet_ct_dx_A0001", "lidc_idri_0001", "lidc_idri_0002"),
        "ops": (), "detect": ("head_phantom_philips_study", "chest_lung_pet_ct_dx_A0001"),
        "e2e": ("chest_lung_pet_ct_dx_A0001",), "fuzz": ("head_ge_patient",),
        "fragments": ("head_phantom_philips_study", "head_ge_patient"), "ingest": ("head_ge_patient",),
        "notify": ("head_ge_patient",), "shadow": ("head_ge_patient",), "soak": ("head_ge_patient",)}


@pytest.mark.parametrize("bench", sorted(QUICK))
def test_the_quick_mode_runs_and_prints_its_figures(bench: str) -> None:
    line, tools = QUICK[bench]
    for tool in tools:
        require_tool(tool)
    for folder in DATA[bench]:
        require_ct(folder)
    if bench == "soak":
        from pathlib import Path

        require("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)",
                any(Path("/usr/lib/postgresql").glob("*/bin/initdb")))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, f"bench/{bench}.py", "--quick"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert re.fullmatch(line, last), f"{last!r}\n{proc.stderr[-4000:]}"
    print(f"bench/{bench}.py --quick: {took:.0f} s")
