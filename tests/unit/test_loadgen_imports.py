"""The load generator holds thousands of sessions in one process: it must not pay for torch."""

import subprocess
import sys


def test_the_load_generator_never_imports_torch():
    code = (
        "import sys, ftte.cli, ftte.loadgen.run, ftte.loadgen.device, ftte.loadgen.pool; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
