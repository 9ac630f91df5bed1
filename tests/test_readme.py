"""The README's set-up commands stay true: CI runs exactly the test command the README shows."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in l]
    assert len(ci_lines) == 1, ci_lines
    readme = (ROOT / "README.md").read_text()
    assert ci_lines[0].strip() in readme, "README.md must show the test command .ci/run runs"
