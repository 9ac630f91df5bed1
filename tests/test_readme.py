"""The README's set-up commands stay true: CI runs exactly the test command the README shows."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in l]
    assert len(ci_lines) == 1, ci_lines
    readme = (ROOT / "README.md").read_text()
    assert ci_lines[0].strip() in readme, "README.md must show the test command .ci/run runs"


def test_readme_cites_only_files_in_the_repository():
    """Links and `docs/...` / `benchmarks/...` paths in the README exist; no document users do
    not have (the development notes behind the package) is cited."""
    import re

    import os

    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "SPEC" not in readme and "ENVIRONMENT.md" not in readme and "STYLE.md" not in readme
    cited = set(re.findall(r"\]\(([^)#]+)\)", readme)) | set(re.findall(r"`((?:docs|benchmarks|tests|hapvr)/[\w./]+)`", readme))
    missing = [p for p in cited if not p.startswith("http") and not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, missing
