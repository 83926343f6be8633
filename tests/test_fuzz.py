"""Files from elsewhere never crash or exhaust the process: a few hundred seeded mutations of committed
``.slim`` files (tests/fuzz_slim.py), run in a subprocess with a time and an address-space limit.
Every case must load and run, or be refused with a SlimFileError: never a signal (a segfault in a
kernel), a hang, a MemoryError or another exception type."""

import resource
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CASES = 300
MEMORY = 6 << 30


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


@pytest.mark.parametrize("seed", [0])
def test_mutated_files_load_and_run_or_are_refused(seed, tmp_path):
    log = tmp_path / "fuzz.log"
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "fuzz_slim.py"), str(seed), str(CASES), str(log)],
            preexec_fn=_limit,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        lines = log.read_text().splitlines() if log.exists() else []
        pytest.fail(f"the fuzzer hung; last case: {lines[-1] if lines else None}")
    lines = log.read_text().splitlines() if log.exists() else []
    assert proc.returncode == 0, f"exit {proc.returncode} (a signal is negative) at: {lines[-1:]}; {proc.stderr[-800:]}"
    outcomes = [ln.split(" ", 2)[2] for ln in lines if not ln.endswith(" start")]
    assert len(outcomes) == CASES
    bad = [ln for ln in lines if " BAD " in ln]
    assert not bad, bad[:5]
    assert outcomes.count("ok") > 0 and outcomes.count("refused") > 0  # both kinds were exercised
