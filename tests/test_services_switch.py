"""The RAWWS_REQUIRE_SERVICES switch turns a missing-service skip into a failure."""

import subprocess
import sys
import textwrap


def run_probe(tmp_path, env_value):
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(
        textwrap.dedent(
            """
            from tests.conftest import skip_or_fail_without_service

            def test_needs_service():
                skip_or_fail_without_service("no such service on this machine")
            """
        )
    )
    env = {"PATH": "/usr/bin:/bin", "RAWWS_REQUIRE_SERVICES": env_value, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django", str(test_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_missing_service_skips_by_default(tmp_path):
    result = run_probe(tmp_path, "")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout


def test_missing_service_fails_when_services_are_required(tmp_path):
    result = run_probe(tmp_path, "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "required service unavailable" in result.stdout
