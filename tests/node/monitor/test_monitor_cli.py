"""`ctnode monitor` (its typer app, run by typer's CliRunner) and the Prometheus view of the same figures
(SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from node.cli.monitor import app
from node.db.schema import AuditEvent
from node.events import AuditKind
from node.monitor.periods import PeriodKind, periods_between
from node.monitor.prometheus import MonitorCollector
from tests.node.monitor.conftest import MONDAY, Site, finding
from tests.node.monitor.test_monitor_figures import ten_studies

WEEKS = periods_between(MONDAY, MONDAY + timedelta(weeks=7), PeriodKind.WEEK)


def config_file(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "ctnode.yaml"
    path.write_text(f"database:\n  url: {db_url}\nstorage:\n  data_dir: {tmp_path / 'data'}\n  min_free_bytes: 0\n")
    return path


def jump(site: Site) -> None:
    """Seven weeks of 30 chest studies, flagged 10% of the time, then 60% from the sixth week (2024-W23)."""
    rng = np.random.default_rng(3)
    for k, week in enumerate(WEEKS):
        for i in range(30):
            flagged = rng.random() < (0.1 if k < 5 else 0.6)
            site.run([finding(0.6)] if flagged else [], week.start + timedelta(hours=1 + i),
                     facts={"convolution_kernel": "STANDARD", "contrast": False})


def test_monitor_prints_the_figures_and_the_drift_alarms(engine: Engine, site: Site, db_url: str,
                                                         tmp_path: Path) -> None:
    ten_studies(site)
    config = config_file(tmp_path, db_url)
    runner = CliRunner()
    window = ["-c", str(config), "--since", "2024-04-29", "--until", "2024-05-06"]
    result = runner.invoke(app, [*window, "--period", "week", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    [f] = out["figures"]
    assert (f["model_name"], f["period"], f["studies"], f["findings"]) == ("ctnode-chest", "2024-W18", 10, 7)
    [s] = f["study_level"]
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (4, 1, 2, 1)
    assert s["sensitivity"]["value"] == 0.8 and [round(v, 4) for v in s["sensitivity"]["ci95"]] == [0.3755, 0.9638]
    assert f["acceptance"]["successes"] == 3 and f["lesion_level"]["cpm"]["value"] == 0.75
    assert out["drift_alarms"] == []  # one week: all baseline
    table = runner.invoke(app, [*window, "--model", "ctnode-chest"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in table.stdout  # an 80-column terminal shows it whole
    [flagged] = [line for line in lines if "2024-W18" in line and "6/10" in line]
    assert "0.60 6/10" in flagged and "3/5" in flagged and "55.0" in flagged
    assert any("0.80 4/5" in line and "0.67 2/3" in line for line in lines)
    assert any("0.38-0.96" in line and "0.21-0.94" in line for line in lines)
    assert "lung_nodule against the reports" in table.stdout and "drift alarms" in table.stdout
    empty = runner.invoke(app, ["-c", str(config), "--since", "2023-01-01", "--until", "2023-01-08"])
    assert empty.exit_code == 0 and "no studies read" in empty.output
    backwards = runner.invoke(app, ["-c", str(config), "--since", "2024-05-06", "--until", "2024-04-29"])
    assert backwards.exit_code == 2 and "must be after" in backwards.output


def test_monitor_lists_a_drift_alarm_and_audits_it_once(engine: Engine, site: Site, db_url: str,
                                                        tmp_path: Path) -> None:
    jump(site)
    args = ["-c", str(config_file(tmp_path, db_url)), "--since", "2024-04-29", "--until", "2024-06-17",
            "--baseline", "4"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "ALARM ctnode-chest 0.2.0 2024-W23: positive rate" in first.output and "(new)" in first.output
    again = CliRunner().invoke(app, [*args, "--json"])
    alarms = json.loads(again.stdout)["drift_alarms"]
    assert {(a["metric"], a["period"]) for a in alarms} >= {("positive rate", "2024-W23")}
    assert not any(a["new"] for a in alarms)
    with engine.connect() as conn:
        keys = conn.execute(select(AuditEvent.detail).where(AuditEvent.kind == str(AuditKind.DRIFT_ALARM))).scalars()
        keys = [d["key"] for d in keys]
    assert len(keys) == len(set(keys)) == len(alarms)


def scrape(engine: Engine, now: datetime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a registry holding the monitor's collector as of ``now``."""
    registry = CollectorRegistry()
    registry.register(MonitorCollector(engine, clock=lambda: now))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


CHEST = {"model": "ctnode-chest", "version": "0.2.0"}


def sample(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return got[(name, tuple(sorted({**CHEST, **labels}.items())))]


def test_the_prometheus_view_has_the_same_figures(engine: Engine, site: Site) -> None:
    ten_studies(site)
    got = scrape(engine, MONDAY + timedelta(days=6))
    assert sample(got, "ctnode_monitor_studies") == 10 and sample(got, "ctnode_monitor_findings_per_study") == 0.7
    accuracy = {"figure": "sensitivity", "finding_type": "lung_nodule"}
    assert sample(got, "ctnode_monitor_study_accuracy", **accuracy, estimate="value") == 0.8
    assert round(sample(got, "ctnode_monitor_study_accuracy", **accuracy, estimate="ci_low"), 4) == 0.3755
    assert sample(got, "ctnode_monitor_cpm", estimate="value") == 0.75
    assert sample(got, "ctnode_monitor_acceptance_ratio", estimate="value") == 0.6
    assert sample(got, "ctnode_monitor_result_latency_seconds", quantile="0.5") == 55.0


def test_the_prometheus_view_shows_and_audits_a_drift_breach(engine: Engine, site: Site) -> None:
    jump(site)
    now = WEEKS[-1].end - timedelta(hours=1)
    got = scrape(engine, now)
    assert sample(got, "ctnode_monitor_studies") == 30  # the 7 days before: the last week
    assert sample(got, "ctnode_monitor_flagged_ratio", estimate="value") > 0.3
    assert sample(got, "ctnode_drift_breach", group="outputs", metric="positive rate") == 1.0
    assert sample(got, "ctnode_drift_breach", group="inputs", metric="contrast share") == 0.0
    assert sample(got, "ctnode_drift_breach", group="inputs", metric="kernel share: STANDARD") == 0.0
    alarms = ("ctnode_drift_alarms_total", (("metric", "positive rate"), ("model", "ctnode-chest 0.2.0")))
    assert got[alarms] >= 2  # audited by the scrape itself: 2024-W23 and W24
    assert scrape(engine, now)[alarms] == got[alarms]  # and not again


def test_the_metrics_server_does_not_load_torch_for_the_monitor() -> None:
    """Every node process serves /metrics: a receiver must not pay for torch because the figures use the evaluator."""
    code = "import sys, node.web.server, node.cli.monitor; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
