"""The schedule: cron parsing, install into a crontab file or launchd plists (never the real
crontab), run-due and the record of what ran."""
from __future__ import annotations

import json
import plistlib
from datetime import datetime

import pytest

from pipeline.core.errors import UserError
from pipeline.core.cron import job_interval, next_fire, parse_cron, prev_fire
from pipeline.core.schedule import install, launchd_plists, load_jobs, run_due
from tests.archive_support import cli, write_config


def ts(*a):
    return datetime(*a).timestamp()


def test_cron_fields_and_intervals():
    c = parse_cron("0 */12 * * *")
    assert next_fire(c, ts(2025, 3, 1, 0, 0)) == ts(2025, 3, 1, 12, 0)
    assert prev_fire(c, ts(2025, 3, 1, 11, 59)) == ts(2025, 3, 1, 0, 0)
    sat = parse_cron("0 21 * * 6")
    assert next_fire(sat, ts(2025, 3, 3)) == ts(2025, 3, 8, 21, 0)       # 8 March 2025 is a Saturday
    assert job_interval("0 */12 * * *") == 12 * 3600
    assert job_interval("15 * * * *") == 3600
    assert job_interval("30 */6 * * *") == 6 * 3600
    assert job_interval("0 4 * * *") == 86400
    assert job_interval("0 21 * * 6") == 7 * 86400
    assert parse_cron("@daily").hours == {0}
    assert parse_cron("0 0 * * 7").weekdays == {0}
    for bad in ("* * *", "61 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"):
        with pytest.raises(UserError):
            parse_cron(bad)


def test_default_jobs_follow_the_seed(tmp_root):
    jobs = load_jobs(tmp_root)
    assert jobs["archive"].cron == "0 */12 * * *"
    assert jobs["archive"].steps == [["run", "tar", "--once"], ["run", "primary", "--once"]]
    assert jobs["mirror-data"].cron == "15 * * * *"
    assert jobs["backup"].cron == "30 */6 * * *"
    assert (jobs["mirror-tars"].cron, jobs["mirror-data-nightly"].cron) == ("0 4 * * *", "0 6 * * *")
    assert jobs["pipeline-weekly"].cron == "0 21 * * 6"


def test_root_config_overrides_one_job_key_by_key(tmp_root):
    root = write_config(tmp_root, '[schedule.jobs.mirror-tars]\nenabled = false\n'
                                  '[schedule.jobs.archive]\ncron = "5 1 * * *"\n'
                                  '[schedule.jobs.hello]\ncron = "* * * * *"\nsteps = [["status"]]\n')
    jobs = load_jobs(root)
    assert jobs["mirror-tars"].enabled is False and jobs["mirror-tars"].cron == "0 4 * * *"
    assert jobs["archive"].cron == "5 1 * * *" and jobs["archive"].steps[0] == ["run", "tar", "--once"]
    assert jobs["hello"].steps == [["status"]]
    bad = write_config(root, '[schedule.jobs.broken]\ncron = "99 * * * *"\nsteps = [["status"]]\n')
    with pytest.raises(UserError, match="broken|99"):
        load_jobs(bad)


def test_install_into_a_crontab_file_keeps_other_lines(tmp_root, tmp_path):
    tab = tmp_path / "crontab"
    tab.write_text("MAILTO=me\n7 7 * * * /usr/bin/true\n")
    install(tmp_root, platform="linux", crontab_file=tab)
    text = tab.read_text()
    assert text.startswith("MAILTO=me\n7 7 * * * /usr/bin/true\n")
    assert f"# BEGIN imageselector {tmp_root.path}" in text
    assert "0 21 * * 6 cd " in text and "schedule run pipeline-weekly --trigger cron" in text
    assert text.count("schedule run") == 9  # the seed's seven jobs + the daily sync + the watch
    root = write_config(tmp_root, '[schedule.jobs.housekeeping]\nenabled = false\n')
    install(root, platform="linux", crontab_file=tab)             # reinstall replaces the block
    text = tab.read_text()
    assert text.count("# BEGIN imageselector") == 1 and text.count("schedule run") == 8
    plan = install(root, platform="linux", crontab_file=tab, dry_run=True, uninstall=True)
    assert tab.read_text() == text                                  # a dry run changes nothing
    assert "imageselector" not in plan.text
    install(root, platform="linux", crontab_file=tab, uninstall=True)
    assert tab.read_text() == "MAILTO=me\n7 7 * * * /usr/bin/true\n"


def test_cli_dry_run_prints_and_never_touches_a_crontab(tmp_root, tmp_path):
    proc = cli("schedule", "install", "--dry-run", "--platform", "linux",
               "--crontab-file", tmp_path / "tab", root=tmp_root)
    assert proc.returncode == 0, proc.stderr
    assert "schedule run archive --trigger cron" in proc.stdout
    assert not (tmp_path / "tab").exists()


def test_launchd_plists_on_macos(tmp_root, tmp_path):
    files = launchd_plists(tmp_root, load_jobs(tmp_root))
    plists = {n: plistlib.loads(b) for n, b in files.items()}
    archive = next(p for n, p in plists.items() if n.endswith(".archive.plist"))
    assert archive["StartCalendarInterval"] == [{"Minute": 0, "Hour": 0}, {"Minute": 0, "Hour": 12}]
    weekly = next(p for n, p in plists.items() if n.endswith(".pipeline-weekly.plist"))
    assert weekly["StartCalendarInterval"] == [{"Minute": 0, "Hour": 21, "Weekday": 6}]
    assert weekly["ProgramArguments"][-4:] == ["run", "pipeline-weekly", "--trigger", "launchd"]
    plan = install(tmp_root, platform="darwin", agents_dir=tmp_path / "agents", load=False)
    assert sorted(p.name for p in (tmp_path / "agents").iterdir()) == sorted(files)
    assert plan.commands == []


def test_run_due_runs_each_slot_once_and_records_it(tmp_root):
    root = write_config(tmp_root, "".join(
        f"[schedule.jobs.{j}]\nenabled = false\n" for j in
        ("archive", "mirror-data", "backup", "mirror-tars", "mirror-data-nightly", "pipeline-weekly", "housekeeping",
         "watch"))
        + '[schedule.jobs.hourly]\ncron = "15 * * * *"\nsteps = [["status"], ["backup", "status"]]\n'
        + '[schedule.jobs.failing]\ncron = "15 * * * *"\nsteps = [["no-such-command"], ["status"]]\n')
    calls = []

    def runner(argv, log):
        calls.append(argv[5:])
        return 2 if argv[5] == "no-such-command" else 0

    now = ts(2025, 3, 1, 10, 20)
    results = run_due(root, now=now, runner=runner)
    assert sorted((r["job"], r["outcome"]) for r in results) == [("failing", "failed"), ("hourly", "ok")]
    assert calls.count(["status"]) == 1 and ["backup", "status"] in calls   # a failed step stops its job
    assert run_due(root, now=now + 60, runner=runner) == []                 # that slot has run
    assert run_due(root, now=ts(2025, 3, 1, 13, 20), runner=runner) == []   # older than catchup: skipped
    shown = json.loads(cli("schedule", "show", "--json", root=root).stdout)
    hourly = next(j for j in shown if j["job"] == "hourly")
    assert hourly["last_run"]["outcome"] == "ok" and hourly["last_run"]["trigger"] == "run-due"


def test_schedule_run_on_the_command_line_records_the_result(tmp_root):
    root = write_config(tmp_root, '[schedule.jobs.quick]\ncron = "0 0 * * *"\nsteps = [["status"]]\n'
                                  '[schedule.jobs.bad]\ncron = "0 0 * * *"\nsteps = [["run", "nope"]]\n')
    assert cli("schedule", "run", "quick", root=root).returncode == 0
    proc = cli("schedule", "run", "bad", root=root)
    assert proc.returncode == 1 and "failed" in proc.stdout
    shown = {j["job"]: j for j in json.loads(cli("schedule", "show", "--json", root=root).stdout)}
    assert shown["quick"]["last_run"]["outcome"] == "ok"
    assert shown["bad"]["last_run"]["outcome"] == "failed"
    assert "run nope" in root.log_path("schedule").read_text()
    assert cli("schedule", "run", "nosuchjob", root=root).returncode == 2


def test_cached_next_fire_agrees_with_the_walk_at_any_moment():
    """The refresh loop's next fire (cached per minute) is the same as the full walk's, for
    moments anywhere inside a minute and across days, weeks and months."""
    import random

    from pipeline.core.cron import next_fire, next_fire_cached, parse_cron

    rng = random.Random(7)
    for text in ("*/15 * * * *", "0 21 * * 6", "30 */6 * * *", "15 * * * *", "0 4 1 * *"):
        cron = parse_cron(text)
        for _ in range(500):
            at = 1.7e9 + rng.random() * 4e7
            assert next_fire_cached(text, at) == next_fire(cron, at), (text, at)
