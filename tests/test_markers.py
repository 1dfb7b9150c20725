"""The prerequisite markers skip with their reason, and CI turns any skip into a failure.

Runs pytest in a subprocess on a small test file written here, with tests/conftest.py
loaded as a plugin, as a contributor's run and CI's run would see it.
"""

import os
import subprocess
import sys

from tests.helpers import ROOT

SUITE = '''
import pytest

@pytest.mark.node
def test_needs_node():
    pass

def test_skips_itself():
    pytest.skip("no data here")

def test_plain():
    pass
'''


def run_suite(tmp_path, **env):
    (tmp_path / "test_suite.py").write_text(SUITE)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull, "-rs", "-q",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_suite.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT, **env})
    return p.returncode, p.stdout + p.stderr


def test_a_missing_prerequisite_skips_its_tests_with_the_reason(tmp_path):
    code, out = run_suite(tmp_path, PATH=os.path.dirname(sys.executable), CI="")  # no node on PATH
    assert code == 0, out
    assert "needs node: node is not on PATH" in out and "1 passed, 2 skipped" in out


def test_in_ci_every_skip_is_a_failure_with_its_reason(tmp_path):
    code, out = run_suite(tmp_path, PATH=os.path.dirname(sys.executable), CI="true")
    assert code == 1, out
    assert "CI (CI=true) runs every test: Skipped: needs node" in out
    assert "CI (CI=true) runs every test: Skipped: no data here" in out
    assert "1 failed, 1 passed, 1 error in" in out  # the skip at set-up (the marker) counts as an error
