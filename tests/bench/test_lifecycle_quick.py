"""bench/lifecycle.py --quick as CI runs it: live model, reviews, a site fine-tune, shadow, comparison, promotion and
rollback through a real node, and the bench's last line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import REPO, require_ct, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NUMBER = r"-?[0-9.]+|nan"
LINE = re.compile(rf"^site_studies=(\d+) cpm_live=({NUMBER}) cpm_candidate=({NUMBER}) paired_delta=({NUMBER}) "
                  rf"ci_low=({NUMBER}) ci_high=({NUMBER}) shadow_delay_live_s=({NUMBER}) promoted=([01]) "
                  r"rolled_back=([01])$")


def test_the_quick_lifecycle_trains_shadows_compares_promotes_and_rolls_back() -> None:
    require_tool("storescu")
    for folder in ("lidc_idri_0001", "lidc_idri_0002"):
        require_ct(folder)
    proc = subprocess.run([sys.executable, "bench/lifecycle.py", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    found = LINE.match(last)
    assert found is not None, last
    assert int(found[1]) == 9, "6 studies for the live model, 3 in shadow"
    assert (found[8], found[9]) == ("1", "1"), "the candidate was promoted, then rolled back"
    assert "radiologist:" not in proc.stderr, proc.stderr[-4000:]
