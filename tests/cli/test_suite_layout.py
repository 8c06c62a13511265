"""Issue 14 item 10: `make test` runs the fast suite and says how to run the slow set; CI runs both;
the long tests (minutes each on 2 cores) carry the `slow` marker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# the tests that took the longest on the 2-core development machine (seconds, measured with
# `pytest --durations=0` on a busy machine): trainer 460, 240, 50; torchrun 35-76 each
LONG = [
    "tests/distill/test_trainer.py::test_resume_matches_uninterrupted_run",
    "tests/distill/test_trainer.py::test_tiny_recipe_learns_every_teacher_and_exports",
    "tests/distill/test_trainer.py::test_nonfinite_loss_skips_then_stops",
    "tests/distill/test_distributed.py::test_torchrun_max_restarts_recovers_a_killed_worker",
    "tests/distill/test_distributed.py::test_two_process_run_equals_one_process_with_same_global_batch[ddp]",
    "tests/distill/test_distributed.py::test_two_process_run_equals_one_process_with_same_global_batch[fsdp]",
    "tests/distill/test_distributed.py::test_two_partitions_on_different_ranks",
    "tests/distill/test_distributed.py::test_kill_minus_9_then_restart_matches_uninterrupted",
]


def _target(makefile: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert m, f"Makefile has no {name!r} target"
    return m.group(1)


def test_make_test_is_the_fast_suite_and_says_how_to_run_the_slow_one():
    mk = (REPO / "Makefile").read_text()
    fast = _target(mk, "test")
    assert "-m 'not slow'" in fast or '-m "not slow"' in fast
    assert "make test-slow" in fast  # printed at the end of every `make test`
    assert "-m slow" in _target(mk, "test-slow")


def test_ci_runs_the_fast_and_the_slow_suite():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M) and re.search(r"^make test-slow$", ci, re.M)


def test_long_tests_are_marked_slow():
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "slow",
            "tests/distill/test_trainer.py",
            "tests/distill/test_distributed.py",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    selected = {ln.strip() for ln in p.stdout.splitlines() if "::" in ln}
    missing = [t for t in LONG if t not in selected]
    assert not missing, f"not marked slow: {missing}\n{p.stdout[-2000:]}{p.stderr[-2000:]}"
