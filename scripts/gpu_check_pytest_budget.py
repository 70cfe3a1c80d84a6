"""pytest plugin of scripts/gpu_check.py: a time budget for a pytest session, and a JSON tally.

    python -m pytest -p gpu_check_pytest_budget --gc-budget 60 --gc-json out.json ...

(with this folder on ``PYTHONPATH``). After the test that ends past ``--gc-budget`` seconds
(counted from the start of the session, collection included) the session stops the way
``-x`` stops it: the summary, the JSON of pytest-benchmark and this plugin's JSON are still
written. The JSON (rewritten every few seconds while the session runs, so a killed session
leaves one too) holds the counts per outcome, how many tests were not run, the reason it
stopped, every failure (node id, phase, the end of the report) and the skip reasons with counts.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest

_T0 = time.time()


def pytest_addoption(parser):
    group = parser.getgroup("gpu_check")
    group.addoption("--gc-budget", type=float, default=0.0, help="stop after the test that ends past this many seconds")
    group.addoption("--gc-json", default="", help="write the tally here")


class _Tally:
    def __init__(self, config):
        self.budget = config.getoption("--gc-budget")
        self.path = config.getoption("--gc-json")
        self.counts = Counter()
        self.failures, self.skips = [], Counter()
        self.collected, self.stopped, self.last_write = 0, "", 0.0

    def write(self, force=False):
        if not self.path or (not force and time.time() - self.last_write < 2.0):
            return
        self.last_write = time.time()
        done = sum(self.counts[k] for k in ("passed", "failed", "skipped", "xfailed", "xpassed"))
        data = {"collected": self.collected, **{k: self.counts[k] for k in
                                                 ("passed", "failed", "error", "skipped", "xfailed", "xpassed")},
                "not_run": max(0, self.collected - done - self.counts["error_only"]), "stopped": self.stopped,
                "duration_s": round(time.time() - _T0, 1), "budget_s": self.budget,
                "failures": self.failures[:200], "skip_reasons": dict(self.skips.most_common(40))}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)


def pytest_configure(config):
    config._gc_tally = _Tally(config)


def pytest_collection_finish(session):
    session.config._gc_tally.collected = len(session.items)  # after -k / -m deselection
    session.config._gc_tally.write(force=True)


def pytest_runtest_logreport(report):
    tally = getattr(_CONFIG[0], "_gc_tally", None) if _CONFIG else None
    if tally is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            tally.counts["xfailed" if report.skipped else "xpassed"] += 1
        elif report.skipped:
            tally.counts["skipped"] += 1
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            tally.skips[reason.removeprefix("Skipped: ")[:200]] += 1
        elif report.failed and report.when == "setup":
            tally.counts["error"] += 1
            tally.counts["error_only"] += 1
        else:
            tally.counts[report.outcome] += 1
    elif report.when == "teardown" and report.failed:
        tally.counts["error"] += 1
    if report.failed:
        text = getattr(report, "longreprtext", "") or str(report.longrepr)
        tally.failures.append({"nodeid": report.nodeid, "when": report.when, "message": text[-1500:]})
    tally.write()


_CONFIG: list = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    _CONFIG[:] = [session.config]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    tally = item.config._gc_tally
    if tally.budget and time.time() - _T0 > tally.budget and nextitem is not None:
        tally.stopped = f"time budget of {tally.budget:g} s reached"
        item.session.shouldstop = tally.stopped


def pytest_sessionfinish(session, exitstatus):
    tally = session.config._gc_tally
    tally.write(force=True)
