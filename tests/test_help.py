"""Every command line of the repository (examples/, scripts/, benchmarks/: each file with a `__main__` block) answers
`--help` with its help and exit status 0, and nothing else: no measurement, no data loading, no file written.

The scripts run in one child interpreter (tests/help_child.py), so torch and transformers are imported once for all
of them; each script still executes its own top level and argument parsing, as `python SCRIPT --help` would."""

import json
import subprocess
import sys

import pytest

from .helpers import REPO

SCRIPTS = sorted(
    str(path.relative_to(REPO))
    for folder in ("examples", "scripts", "benchmarks")
    for path in (REPO / folder).rglob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)
CHILD = REPO / "tests" / "help_child.py"
# Printing help needs no more than the script's own imports (at most 1.8 s here, under a load of 12); the
# measurements and tiny training runs the scripts start by default take longer than this bound.
SECONDS_PER_SCRIPT = 10


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("help")
    result = workdir.parent / "help_answers.json"
    done = subprocess.run(
        [sys.executable, str(CHILD), str(result), *(str(REPO / s) for s in SCRIPTS)],
        cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    answers = json.loads(result.read_text())
    return {str((REPO / s).relative_to(REPO)): answers[str(REPO / s)] for s in SCRIPTS}


def test_every_command_line_is_found():
    # the discovery must see the kinds of scripts there are; a wrong glob would make the test below vacuous
    assert "examples/pytorch/pretraining/run_capi.py" in SCRIPTS
    assert "scripts/convert/measure_fixture_parity.py" in SCRIPTS
    assert "benchmarks/benchmark_learning.py" in SCRIPTS
    assert len(SCRIPTS) >= 25


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_only_helps(answers, script):
    answer = answers[script]
    assert answer["status"] == 0, answer["stderr"]
    assert answer["stdout"].startswith("usage:"), answer["stdout"][:500]
    assert answer["new_files"] == [], answer["new_files"]
    assert answer["seconds"] < SECONDS_PER_SCRIPT, answer["seconds"]
