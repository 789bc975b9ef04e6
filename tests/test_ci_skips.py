"""In CI (CI=true) a test that needs a missing required extra fails instead of skipping.

The mechanism (tests/conftest.py: ``require``, ``missing_requirement``, the ``required_extra``
marker) is run here on generated test files in a separate pytest process that uses a copy of the
real tests/conftest.py, once without CI, once with CI=true. Other skips (no CUDA device, the real
data absent) stay skips in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ABSENT = "attreid_ci_absent_module_4711"

IN_TESTS = f'''
import pytest
from conftest import missing_requirement, require


def test_absent_module():
    require("{ABSENT}", "needs the absent extra")


def test_broken_install():
    require("broken_extra", "needs the broken extra")


def test_missing_thing():
    missing_requirement("chromium is not installed")


@pytest.mark.required_extra(False, reason="needs the weight wheel")
def test_marked_missing():
    pass


@pytest.mark.required_extra(True, reason="needs the weight wheel")
def test_marked_present():
    pass


@pytest.fixture
def extra():
    return require("{ABSENT}", "the fixture needs the absent extra")


def test_fixture_missing(extra):
    pass


def test_present_module():
    assert require("json", "needs json").dumps(1) == "1"


@pytest.mark.skipif(True, reason="no CUDA device")
def test_cuda_only():
    pass


def test_real_data():
    pytest.skip("real data not found at ../shared/data")
'''

AT_MODULE_LEVEL = f'''
from conftest import require

require("{ABSENT}", "the module needs the absent extra")


def test_never_collected():
    pass
'''

RECORDER = '''
import json, os

outcomes = {}


def pytest_collectreport(report):
    if report.failed:
        outcomes[report.nodeid] = "collect error"
    elif report.skipped:
        outcomes[report.nodeid] = "collect skipped"


def pytest_runtest_logreport(report):
    if report.failed:
        outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
    elif report.skipped:
        outcomes[report.nodeid] = "skipped"
    elif report.when == "call":
        outcomes[report.nodeid] = "passed"


def pytest_sessionfinish(session):
    with open(os.environ["OUTCOMES_FILE"], "w") as f:
        json.dump(outcomes, f)
'''

STAY = {"test_in_tests.py::test_marked_present": "passed",
        "test_in_tests.py::test_present_module": "passed",
        "test_in_tests.py::test_cuda_only": "skipped",
        "test_in_tests.py::test_real_data": "skipped"}
REQUIRED = ["test_in_tests.py::test_absent_module", "test_in_tests.py::test_broken_install",
            "test_in_tests.py::test_missing_thing", "test_in_tests.py::test_marked_missing",
            "test_in_tests.py::test_fixture_missing"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ci_skips")
    shutil.copy(TESTS / "conftest.py", root / "conftest.py")
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "test_in_tests.py").write_text(IN_TESTS)
    (root / "test_at_module_level.py").write_text(AT_MODULE_LEVEL)
    (root / "broken_extra.py").write_text(
        'raise ImportError("libbroken.so.1: cannot open shared object file")\n')
    (root / "outcome_recorder.py").write_text(RECORDER)
    return root


def _run(root: Path, ci: str | None) -> tuple[int, dict[str, str], str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    if ci is not None:
        env["CI"] = ci
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["OUTCOMES_FILE"] = str(root / "outcomes.json")
    (root / "outcomes.json").unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "outcome_recorder", "-p", "no:cacheprovider",
         "-rA", "-q", "."], cwd=root, env=env, capture_output=True, text=True, timeout=120,
        check=False)
    outcomes = json.loads((root / "outcomes.json").read_text())
    return result.returncode, outcomes, result.stdout + result.stderr


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_outside_ci_a_missing_required_extra_skips(project, ci):
    rc, outcomes, output = _run(project, ci)
    assert outcomes == {**STAY, **{t: "skipped" for t in REQUIRED},
                        "test_at_module_level.py": "collect skipped"}, output
    assert rc == 0, output
    assert "libbroken.so.1" in output  # a broken install says why in the skip reason


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_in_ci_a_missing_required_extra_fails(project, ci):
    rc, outcomes, output = _run(project, ci)
    assert outcomes == {
        **STAY,
        "test_in_tests.py::test_absent_module": "failed",
        "test_in_tests.py::test_broken_install": "failed",
        "test_in_tests.py::test_missing_thing": "failed",
        "test_in_tests.py::test_marked_missing": "error",  # fails in setup
        "test_in_tests.py::test_fixture_missing": "error",
        # at module level: one failing item for the module, and the rest of the run goes on
        "test_at_module_level.py::required_extra_missing": "failed",
    }, output
    assert rc == 1, output
    for reason in ("needs the absent extra", "libbroken.so.1", "chromium is not installed",
                   "needs the weight wheel", "the fixture needs the absent extra",
                   "the module needs the absent extra"):
        assert reason in output, reason
    assert "CI=true and a required test dependency is missing" in output


def test_no_test_module_skips_on_an_import_by_itself():
    """Every module the tests import is a dependency of attreid[dev] (or of `make weights` /
    `make browser`): a test skips for a missing one only through conftest.require, so that CI
    fails instead. Other skips (CUDA, real data) are conditions, not imports."""
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bimportorskip\(", line) and "not a required extra" not in line:
                found.append(f"{path.name}:{lineno}: {line.strip()}")
    assert not found, ("use conftest.require(module, reason) instead of pytest.importorskip "
                       "(or mark the line '# not a required extra'):\n" + "\n".join(found))
