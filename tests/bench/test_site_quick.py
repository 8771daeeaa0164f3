"""bench/site.py --quick as CI runs it: a real node, a scripted radiologist, and the bench's last line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import REPO, require_ct, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LINE = re.compile(r"^studies=(\d+) feedback_sr=(\d+) matched=([0-9.]+) report_labels=(\d+) "
                  r"extractor_accuracy=([0-9.]+) site_cpm=([0-9.]+|nan) drift_alarm_phase1=([01]) "
                  r"drift_alarm_phase2=([01])$")


def test_the_quick_site_sends_reviews_reports_and_prints_its_figures() -> None:
    require_tool("storescu")
    for folder in ("chest_lung_pet_ct_dx_A0001", "lidc_idri_0001", "lidc_idri_0002"):
        require_ct(folder)
    proc = subprocess.run([sys.executable, "bench/site.py", "--quick"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    found = LINE.match(last)
    assert found is not None, last
    studies, srs, matched, labels, accuracy = (int(found[1]), int(found[2]), float(found[3]), int(found[4]),
                                               float(found[5]))
    assert studies == 7, "every study sent is received"
    assert labels == 7, "every report is stored with a lung_nodule label"
    assert 1 <= srs <= studies and matched > 0 and accuracy > 0
    assert "radiologist:" not in proc.stderr, proc.stderr[-4000:]
