"""Dependencies flow one way (config → tokenizer → data → model → parallel → train → infer → rl → eval → recipes → cli)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_hold():
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 1 kept, 0 broken" in out.stdout


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    command = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    assert len(command) == 1
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and "bash -c \"$TEST_COMMAND\"" in ci
