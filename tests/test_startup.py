"""Start-up cost: the numeric paths import neither sympy nor scipy (each takes most of a second).

Each check runs in a fresh interpreter, since this test process may have imported both already.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("sympy", "scipy")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_envelope_and_bounds_evaluate_without_sympy():
    r = _run("""
        import sys
        import iosim.traffic
        from iosim.bounds import all_bounds, attention_lower_envelope, get_bound
        env = attention_lower_envelope(65536, 128, [1024.0, 50000.0])
        assert env.value.shape == (2,), env
        assert get_bound("compulsory").evaluate(N=1024, d=64, M=65536) == 262144
        values = dict(N=1024, Nk=4096, d=64, M=65536, L=4096, g=8, s=0.25, m=1024, n=1024, k=1024)
        for b in all_bounds():
            b.evaluate(**values), b.in_regime(**values), b.variables
        heavy = [m for m in ("sympy", "scipy") if m in sys.modules]
        assert not heavy, heavy
        from iosim.bounds import N  # the symbols are still there, made on demand
        assert "sympy" in sys.modules and N.is_positive
    """)
    assert r.returncode == 0, r.stderr


def test_import_cascades_without_scipy():
    r = _run("""
        import sys
        import cascades
        assert "scipy" not in sys.modules
    """)
    assert r.returncode == 0, r.stderr


def test_evaluate_command_imports_neither():
    r = _run("""
        import atexit, sys
        atexit.register(lambda: print("HEAVY", [m for m in ("sympy", "scipy") if m in sys.modules]))
        sys.argv = ["iosim", "evaluate", "--seq-len", "65536", "--heads", "32", "--batch", "4",
                    "--causal", "--json"]
        from iosim.cli import main
        main()
    """)
    assert r.returncode == 0, r.stderr
    assert '"bound"' in r.stdout
    assert r.stdout.rstrip().endswith("HEAVY []"), r.stdout[-300:]
