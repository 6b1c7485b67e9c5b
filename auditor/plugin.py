"""The pytest plugin object the runner passes to pytest.main: fixtures for checks, stage ordering,
outcome collection. Checks are plain pytest functions; the assert is the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .session import STAGES, AuditSession, StageSkipped

BUILTIN_ORDER = ("check_serialization.py", "check_loads_and_runs.py", "check_accuracy.py", "check_backdoor.py")


@dataclass
class CheckRecord:
    id: str
    name: str
    stage: str
    outcome: str  # passed | failed | error | skipped
    message: str
    backdoor: bool
    seconds: float = 0.0
    properties: dict = field(default_factory=dict)  # what the check recorded (record_property): JSON and JUnit


def _stage_of(item) -> str:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("stage", "before") if callspec else "before"


def _properties(pairs) -> dict:
    """record_property pairs as a dict; a name recorded more than once keeps every value, in order."""
    grouped: dict[str, list] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


class AuditPlugin:
    def __init__(self, session: AuditSession):
        self.session = session
        self.records: dict[str, CheckRecord] = {}
        self._seconds: dict[str, float] = {}  # per check: setup + call + teardown so far
        self.collected = 0
        self.result: dict | None = None

    def finalise(self, pytest_exit: int | None) -> dict:
        """Build the result model once, at session end (before pytest-html renders it)."""
        if self.result is None:
            from .report.result import build_result

            self.result = build_result(self, pytest_exit)
        return self.result

    # ------------------------------------------------------------ collection
    def pytest_configure(self, config):
        config.addinivalue_line("markers", "backdoor: a failure means the model may carry a backdoor; triggers the defense")
        if config.pluginmanager.hasplugin("html"):
            from .report.html import HtmlHooks

            config.pluginmanager.register(HtmlHooks(self), "auditor-html")

    def pytest_generate_tests(self, metafunc):
        if "stage" in metafunc.fixturenames:
            metafunc.parametrize("stage", STAGES)

    def pytest_collection_modifyitems(self, session, config, items):
        def key(item):
            name = Path(str(item.fspath)).name
            builtin = BUILTIN_ORDER.index(name) if name in BUILTIN_ORDER else len(BUILTIN_ORDER)
            return (STAGES.index(_stage_of(item)), builtin)

        items.sort(key=key)
        self.collected = len(items)

    def pytest_runtest_setup(self, item):
        if _stage_of(item) == "after" and self.session.defense_needed is None:
            failed = any(r.backdoor and r.stage == "before" and r.outcome == "failed" for r in self.records.values())
            self.session.decide_defense(failed)

    # ------------------------------------------------------------ outcomes
    def pytest_collectreport(self, report):
        if report.failed:
            text = str(report.longrepr).strip().splitlines()
            message = next((line.lstrip("E ").strip() for line in reversed(text) if line.startswith("E ")), text[-1] if text else "")
            self.records[report.nodeid] = CheckRecord(
                id=report.nodeid, name=Path(report.nodeid).name, stage="before", outcome="error",
                message=f"cannot collect checks: {message}", backdoor=False,
            )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        outcome, message = None, ""
        if call.excinfo is not None:
            exc = call.excinfo.value
            if report.skipped:
                outcome, message = "skipped", _first_line(getattr(exc, "msg", exc))
            elif call.when == "call" and isinstance(exc, AssertionError):
                outcome, message = "failed", _first_line(exc) or "assertion failed"
            else:
                outcome = "error"
                message = _first_line(exc) if isinstance(exc, Exception) else type(exc).__name__
                if not isinstance(exc, (StageSkipped,)) and type(exc).__name__ not in ("AuditorInputError", "UnsafeModelError"):
                    message = f"{type(exc).__name__}: {message}"
        elif call.when == "call":
            outcome = "passed"
        # a check's time is its setup (where the scan, metrics and defense fixtures run) + call + teardown,
        # as JUnit counts it; the call alone is often a comparison of numbers computed in setup
        nodeid = item.nodeid
        self._seconds[nodeid] = self._seconds.get(nodeid, 0.0) + getattr(report, "duration", 0.0)
        if outcome is not None:
            record = self.records.get(nodeid)
            if record is None or record.outcome == "passed" or outcome == "error":
                self.records[nodeid] = CheckRecord(
                    id=nodeid, name=item.originalname if hasattr(item, "originalname") else item.name,
                    stage=_stage_of(item), outcome=outcome, message=message,
                    backdoor=item.get_closest_marker("backdoor") is not None,
                    seconds=0.0, properties=_properties(item.user_properties),
                )
        if nodeid in self.records:
            self.records[nodeid].seconds = round(self._seconds[nodeid], 3)
        return report

    # ------------------------------------------------------------ fixtures
    @pytest.fixture
    def audit_config(self):
        return self.session.config

    @pytest.fixture
    def audit_session(self):
        return self.session

    @pytest.fixture
    def model(self, stage):
        try:
            return self.session.model(stage)
        except StageSkipped as exc:
            pytest.skip(str(exc))

    @pytest.fixture
    def model_file(self, stage):
        try:
            return self.session.model_file(stage)
        except StageSkipped as exc:
            pytest.skip(str(exc))

    @pytest.fixture
    def clean_data(self, model):
        self.session.require("data")
        return self.session.split

    @pytest.fixture
    def scan(self, model, clean_data, stage):
        return self.session.scan(stage)

    @pytest.fixture
    def metrics(self, model, clean_data, stage):
        if self.session.data_free:
            pytest.skip("--data none: accuracy and ASR need real samples: not measured")
        return self.session.metrics(stage)

    @pytest.fixture
    def known_trigger(self):
        self.session.require("trigger")
        return self.session.known_trigger
