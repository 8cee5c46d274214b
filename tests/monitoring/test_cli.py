"""``recstack monitor`` and ``recstack report`` on the served feed of tests/monitoring/conftest.py."""

from __future__ import annotations

from datetime import timedelta

from typer.testing import CliRunner

from recstack.cli import app
from tests.monitoring.conftest import Served, monitor_env

runner = CliRunner()


def _env(served: Served) -> dict[str, str]:
    return monitor_env(served.settings.paths.state_dir) | {
        "RECSTACK_EVENT_LOG__PATH": str(served.root / "events"),
        "RECSTACK_MONITORING__TABLE": str(served.root / "cli.sqlite"),
        "COLUMNS": "250",  # rich wraps the findings table to the terminal
    }


def test_monitor_checks_a_window_records_it_and_the_report_draws_it(served_feed: Served) -> None:
    start, end = served_feed.days[2]
    result = runner.invoke(
        app,
        ["monitor", "--since", start.isoformat(), "--until", end.isoformat(), "--no-act", "--show", "all"],
        env=_env(served_feed),
    )
    assert result.exit_code == 0, result.output
    assert "1,500 impressions, champion 1" in result.output
    for check in ("feature_drift", "prediction_drift", "calibration", "online"):
        assert check in result.output
    out = served_feed.root / "report.html"
    result = runner.invoke(app, ["report", "--out", str(out)], env=_env(served_feed))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for section in ("Feature drift", "Calibration", "Online metrics", "Latency per stage", "Registry"):
        assert section in page, section
    assert page.count("<img") >= 5
    # any range of the log, the checks run now on its windows (nothing recorded)
    result = runner.invoke(
        app,
        ["report", "--out", str(out), "--from-log", "--since", served_feed.days[0][0].isoformat(),
         "--until", served_feed.days[1][1].isoformat()],
        env=_env(served_feed),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    page = out.read_text()  # one run per [monitoring] window_s of the range: three here
    assert "3 runs over windows from " + served_feed.days[0][0].isoformat() in page


def test_fail_on_breach_exits_3_and_bad_ranges_fail_clearly(served_feed: Served) -> None:
    start, end = served_feed.days[0]
    env = _env(served_feed) | {"RECSTACK_MONITORING__ECE": "0.001"}  # every head is "miscalibrated"
    args = ["monitor", "--since", start.isoformat(), "--until", end.isoformat(), "--no-act"]
    result = runner.invoke(
        app, [*args, "--fail-on-breach"], env=env | {"RECSTACK_MONITORING__SETTLE_WINDOWS": "0"}
    )
    assert result.exit_code == 3, result.output
    assert "calibration" in result.output
    result = runner.invoke(
        app, ["monitor", "--since", end.isoformat(), "--until", start.isoformat()], env=env
    )
    assert result.exit_code == 1 and "not before" in result.output
    result = runner.invoke(app, ["report", "--from-log"], env=env)
    assert result.exit_code == 1 and "needs --since and --until" in result.output
    empty = start - timedelta(days=5)
    result = runner.invoke(
        app,
        [
            "monitor",
            "--since",
            empty.isoformat(),
            "--until",
            (empty + timedelta(days=1)).isoformat(),
            "--show",
            "all",
        ],
        env=env,
    )
    assert result.exit_code == 0 and "0 impressions" in result.output and "too_small" in result.output
