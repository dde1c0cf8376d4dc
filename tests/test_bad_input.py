"""Bad input of every kind a user can plausibly give: each is a one-line error naming the
culprit (``error: ...``), exit status 2, no traceback, and nothing half-written."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import cascades
from cascades.ir import MAX_DEPTH
from iosim.cli import main
from iosim.errors import IosimError

ATTN = cascades.library.text("attention-1pass")
LAST = "O[p, f]         = RNV[M1, p, f] / RD[M1, p]"
SMALL = "cascade small\ninput A[P]\noutput O[P]\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *words) -> str:
    """Exit 2 with exactly one line ``error: ...`` that contains every word."""
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def no_leftovers(d: Path) -> None:
    """No temporary file (``.NAME.*.tmp``, a probe) was left behind in ``d``."""
    assert not [p for p in d.iterdir() if p.name.startswith(".")], list(d.iterdir())


# ---------------------------------------------------------------- 1. deep expressions

@pytest.mark.parametrize("expr,depth", [
    (" + ".join(["A[p]"] * 990), 990),                 # a 990-term sum
    ("- " * 3000 + "A[p]", 3001),                      # 3000 unary minus
    ("exp(" * 150 + "A[p]" + ")" * 150, 151),          # nested calls
    ("(A[p] + " * 150 + "A[p]" + ")" * 150, 151),      # nested parentheses with operators
], ids=["sum", "unary-minus", "calls", "parentheses"])
def test_deep_expression_is_refused_with_depth_and_line(tmp_path, expr, depth):
    f = write(tmp_path, "deep.casc", SMALL + "\n# a comment\nO[p] = " + expr + "\n")
    one_line_error(run("cascades", "check", f), "deep.casc:6", f"nested {depth} levels deep",
                   f"at most {MAX_DEPTH}")


def test_deep_parameter_default_is_refused(tmp_path):
    f = write(tmp_path, "deep.casc", "cascade d\nparam s = " + "-(" * 500 + "P" + ")" * 500
              + "\n" + SMALL.split("\n", 1)[1] + "O[p] = s * A[p]\n")
    one_line_error(run("cascades", "check", f), "deep.casc:2", "parameter default", "levels deep")


def test_many_parentheses_around_one_term_are_fine(tmp_path):
    f = write(tmp_path, "parens.casc", SMALL + "O[p] = " + "(" * 85 + "A[p]" + ")" * 85 + "\n")
    r = run("cascades", "check", f)
    assert r.exit_code == 0, r.output


def test_deepest_accepted_expression_runs_through_every_walker(tmp_path):
    """An expression at the depth limit goes through the executor, passes, FLOP counting,
    the spatial model, printing and code generation without a RecursionError."""
    nest = "exp(" * (MAX_DEPTH - 3) + "0" + ")" * (MAX_DEPTH - 3)
    f = write(tmp_path, "deep.casc", ATTN.replace(LAST, f"O[p, f] = RNV[M1, p, f] / RD[M1, p] "
                                                      f"* {nest}"))
    c = cascades.load(str(f))
    assert cascades.parse(c.to_text()) == c and hash(c.einsums[-1])
    for args in (["cascades", "run", f, "--seq-len", "32", "--reference", "none"],
                 ["cascades", "passes", f], ["cascades", "show", f], ["evaluate", f],
                 ["spatial", f]):
        r = run(*args)
        assert r.exit_code == 0 and "Traceback" not in r.output, (args, r.output[-500:])
    r = run("codegen", f)   # refused for its structure (not its depth), in one line
    assert r.exit_code in (0, 2) and "Recursion" not in r.output


# ------------------------------------------------------------ 2. dtypes without a rate

@pytest.mark.parametrize("args,words", [
    (["--dtype", "fp32"], ["'fp32'", "'h100'", "matrix"]),
    (["--dtype", "fp8", "--hw", "two-level"], ["'fp8'", "'two-level'"]),
    (["--dtype", "int4"], ["'int4'", "'h100'"]),
])
def test_dtype_without_a_rate_is_an_error_not_infinite_time(args, words):
    msg = one_line_error(run("evaluate", *args), *words)
    assert "inf" not in msg.split("rates")[0]


def test_traffic_rates_never_none():
    from iosim.hardware import load_hardware
    from iosim.traffic import _rates
    r = _rates(load_hardware("h100"), "bf16")
    assert all(v and v > 0 for v in r.values())
    with pytest.raises(IosimError, match="fp32"):
        _rates(load_hardware("h100"), "fp32")


# --------------------------------------------------------------- 3. infinite or NaN values

def test_infinite_capacity_in_a_hardware_file(tmp_path):
    from importlib import resources
    text = (resources.files("iosim") / "presets" / "h100.toml").read_text()
    f = write(tmp_path, "hw.toml", text.replace('capacity = "228 KiB"', 'capacity = "1e400 KiB"'))
    one_line_error(run("evaluate", "--hw", f), "hw.toml", "level[SMEM].capacity", "1e400 KiB")


@pytest.mark.parametrize("args,words", [
    (["evaluate", "--sram", "1e400B"], ["--sram", "1e400B"]),
    (["evaluate", "--sram", "1e400el"], ["--sram", "1e400el"]),
    (["evaluate", "--sram", "1e-400KiB"], ["--sram", "1e-400KiB"]),
    (["cascades", "run", "--logit-scale", "inf"], ["--logit-scale", "inf"]),
    (["cascades", "run", "--logit-scale", "nan"], ["--logit-scale", "nan"]),
    (["cascades", "run", "--param", "scale=nan"], ["--param", "scale=nan"]),
])
def test_non_finite_numbers(args, words):
    one_line_error(run(*args), *words)


def test_number_too_large_in_a_cascade(tmp_path):
    f = write(tmp_path, "big.casc", SMALL + "O[p] = 1e400 * A[p]\n")
    one_line_error(run("cascades", "check", f), "big.casc:4", "1e400")


# --------------------------------------------------------------- 4. memory exhaustion

@pytest.mark.parametrize("args", [["--seq-len", "10000000"],
                                  ["attention-gqa", "--seq-len", "100000", "--groups", "64"]])
def test_run_refuses_what_cannot_fit_in_memory(args):
    one_line_error(run("cascades", "run", *args), "needs about", "memory", "--seq-len")


def test_executor_estimate_tracks_the_arrays():
    from cascades.executor import check_memory, memory_estimate, resolve
    c = cascades.load("attention-3pass")
    ext, _ = resolve(c, {"P": 1000, "M": 1000, "E": 64, "F": 64})
    need, largest = memory_estimate(c, ext)
    assert 8 * 1000 * 1000 <= need < 100 * 8 * 1000 * 1000 and largest.startswith("QK[")
    with pytest.raises(cascades.ExecutionError, match="needs about .* of memory"):
        check_memory(c, ext, limit=need - 1)


# --------------------------------------------------------------- 5. unwritable outputs

def test_codegen_out_unwritable(tmp_path):
    one_line_error(run("codegen", "attention-1pass", "--out", "/proc/x/y.py"), "/proc/x/y.py")
    blocker = write(tmp_path, "file", "x")
    one_line_error(run("codegen", "attention-1pass", "--out", blocker / "k.py"),
                   str(blocker / "k.py"), "is a file, not a directory")
    assert blocker.read_text() == "x"


def test_codegen_out_permission_denied_leaves_nothing(tmp_path, monkeypatch):
    import iosim.cli.common as common

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(common.os, "replace", deny)
    out = tmp_path / "k.py"
    one_line_error(run("codegen", "attention-1pass", "--out", out), str(out), "Permission denied")
    assert not out.exists()
    no_leftovers(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line_error(run("codegen", "attention-1pass", "--out", ro / "k.py"), str(ro / "k.py"))
        one_line_error(run("sweep", "fa1", "--seq-len", "1K", "--out", ro, "--no-progress"),
                       str(ro))
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["sweep", "fa1", "--seq-len", "1K", "--no-progress", "--out"],
    ["spatial", "reproduce", "--no-figures", "--out"],
    ["experiment", "ski_slope", "--quick", "--out"],
])
def test_out_directory_unwritable(tmp_path, args):
    one_line_error(run(*args, "/proc/x/y"), "/proc/x/y")
    blocker = write(tmp_path, "file", "x")
    one_line_error(run(*args, blocker), "file")
    one_line_error(run(*args, blocker / "sub"), "is a file, not a directory")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_uses_the_umask(tmp_path, mask, mode):
    from iosim.cli.common import atomic_write
    old = os.umask(mask)
    try:
        atomic_write(tmp_path / "a" / "f.txt", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "f.txt").stat().st_mode) == mode
    no_leftovers(tmp_path / "a")


def test_spatial_reproduce_writes_atomically(tmp_path, monkeypatch):
    """Every CSV of the reproduction goes through atomic_write (no direct to_csv)."""
    import iosim.cli.common as common
    written = []
    real = common.atomic_write
    monkeypatch.setattr(common, "atomic_write", lambda p, d: (written.append(Path(p).name),
                                                             real(p, d)))
    r = run("spatial", "reproduce", "--no-figures", "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output[-500:]
    on_disk = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert on_disk and sorted(written) == on_disk
    for p in (tmp_path / "o").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ----------------------------------------------------------------- 6. sweep resume

def _spec(hw, **kw):
    from iosim.sweep import SweepSpec, resolve_algorithm
    base = dict(algorithms=(resolve_algorithm("fa2"),), hardware=str(hw),
                srams=(16384.0, 65536.0), seq_lens=(1024, 2048), head_dims=(64,))
    base.update(kw)
    return SweepSpec(**base)


def _two_level(tmp_path, bandwidth="10 TB/s") -> Path:
    from importlib import resources
    text = (resources.files("iosim") / "presets" / "two-level.toml").read_text()
    assert '"10 TB/s"' in text
    return write(tmp_path, "hw.toml", text.replace('"10 TB/s"', f'"{bandwidth}"'))


def test_sweep_resume_is_keyed_on_content(tmp_path, capsys):
    from iosim.sweep import run_sweep
    hw = _two_level(tmp_path)
    out = tmp_path / "o"
    first = run_sweep(_spec(hw), out, progress=False)
    assert first["config_hash"].nunique() == 1
    seen = []
    run_sweep(_spec(hw), out, progress=False, on_chunk=lambda d, t: seen.append(d))
    assert seen == []                                   # same content: nothing to do
    _two_level(tmp_path, "11 TB/s")                     # same file name, other numbers
    again = run_sweep(_spec(hw), out, progress=False, on_chunk=lambda d, t: seen.append(d))
    assert seen == [4] and len(again) == 4              # every row evaluated again, replaced
    assert again["config_hash"].iloc[0] != first["config_hash"].iloc[0]
    assert "evaluated again" in capsys.readouterr().err
    seen.clear()
    run_sweep(_spec(hw, causal=True), out, progress=False, on_chunk=lambda d, t: seen.append(d))
    assert seen == [4]                                  # other settings: other rows
    assert len(pd.read_csv(out / "sweep.csv")) == 4


def test_sweep_resume_drops_a_truncated_last_row(tmp_path, capsys):
    from iosim.sweep import run_sweep
    hw = _two_level(tmp_path)
    out = tmp_path / "o"
    run_sweep(_spec(hw), out, progress=False)
    csv = out / "sweep.csv"
    csv.write_text(csv.read_text()[:-25])               # cut inside the last row
    seen = []
    full = run_sweep(_spec(hw), out, progress=False, on_chunk=lambda d, t: seen.append(d))
    assert seen == [1] and len(full) == 4
    assert "cut short" in capsys.readouterr().err
    assert len(pd.read_csv(csv)) == 4 and csv.read_text().endswith("\n")


def test_sweep_resume_refuses_a_damaged_csv(tmp_path):
    hw = _two_level(tmp_path)
    out = tmp_path / "o"
    args = ["sweep", "fa2", "--hw", hw, "--sram", "16KiB", "--seq-len", "1K,2K", "--out", out,
            "--no-progress", "--no-plots"]
    assert run(*args).exit_code == 0
    csv = out / "sweep.csv"
    lines = csv.read_text().split("\n")
    good = csv.read_text()
    csv.write_text("\n".join([lines[0], lines[1][:30]] + lines[2:]))
    one_line_error(run(*args), "sweep.csv, line 2", "fields")
    csv.write_text(good.replace(",1024,", ",abc,", 1))
    one_line_error(run(*args), "sweep.csv, line 2", "column n")
    csv.write_bytes(b"\xff\xfe" + good.encode())
    one_line_error(run(*args), "sweep.csv", "not a sweep CSV")


def test_sweep_resume_replaces_rows_without_a_hash(tmp_path):
    from iosim.sweep import run_sweep
    hw = _two_level(tmp_path)
    out = tmp_path / "o"
    run_sweep(_spec(hw), out, progress=False)
    csv = out / "sweep.csv"
    pd.read_csv(csv).drop(columns=["config_hash"]).to_csv(csv, index=False)  # an older CSV
    full = run_sweep(_spec(hw), out, progress=False)
    assert len(full) == 4 and full["config_hash"].notna().all()


# ----------------------------------------------------------------- 7. unclear messages

def test_utf8_bom_is_accepted(tmp_path):
    f = write(tmp_path, "bom.casc", b"\xef\xbb\xbf" + ATTN.encode())
    r = run("cascades", "check", f)
    assert r.exit_code == 0, r.output
    assert cascades.parse("\ufeff" + ATTN) == cascades.parse(ATTN)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_cascade_file(tmp_path, text):
    f = write(tmp_path, "empty.casc", text)
    one_line_error(run("cascades", "check", f), "empty.casc", "no statements")


def test_directory_given_as_a_cascade(tmp_path):
    d = tmp_path / "algo.casc"
    d.mkdir()
    one_line_error(run("cascades", "check", d), "algo.casc", "is a directory")
    one_line_error(run("cascades", "run", tmp_path), str(tmp_path), "is a directory")
    one_line_error(run("evaluate", d), "algo.casc", "is a directory")


def test_hardware_file_directory_and_bom(tmp_path):
    from importlib import resources

    from iosim.hardware import load_hardware
    one_line_error(run("evaluate", "--hw", f"{tmp_path}/"), str(tmp_path), "is a directory")
    text = (resources.files("iosim") / "presets" / "two-level.toml").read_text()
    f = write(tmp_path, "bom.toml", b"\xef\xbb\xbf" + text.encode())
    assert load_hardware(str(f)).levels == load_hardware("two-level").levels


def test_binary_cascade_file(tmp_path):
    f = write(tmp_path, "bin.casc", b"cascade x\xff\n")
    one_line_error(run("cascades", "check", f), "bin.casc", "not UTF-8")


@pytest.mark.parametrize("args,words", [
    (["evalute"], ["'iosim evalute'", "did you mean 'iosim evaluate'?"]),
    (["nonsense"], ["'iosim nonsense'", "commands:"]),
    (["cascades", "rn"], ["'iosim cascades rn'", "'iosim cascades run'"]),
    (["bounds", "shw"], ["'iosim bounds shw'", "'iosim bounds show'"]),
    (["--bogus"], ["--bogus"]),
])
def test_unknown_commands(args, words):
    one_line_error(run(*args), *words)


@pytest.mark.parametrize("args,words", [
    (["cascades", "run", "--seq-len", "abc"], ["--seq-len", "abc", "iosim cascades run --help"]),
    (["cascades", "run", "--bogus"], ["--bogus"]),
    (["cascades", "check"], ["Missing argument", "iosim cascades check --help"]),
    (["cascades", "passes", "attention-1pass", "--head-dim", "0"], ["--head-dim"]),
    (["codegen", "attention-1pass", "--block-m", "x"], ["--block-m", "iosim codegen --help"]),
    (["codegen"], ["Missing argument"]),
    (["spatial", "reproduce", "--bogus"], ["--bogus"]),
    (["spatial", "list", "extra"], ["extra"]),
    (["bounds", "show"], ["Missing argument"]),
    (["experiment", "--out"], ["--out"]),
    (["evaluate", "--seq-len", "x"], ["--seq-len"]),
    (["search", "--bogus"], ["--bogus"]),
    (["sweep", "fa1", "--seq-len", "1K", "--batch", "0"], ["--batch"]),
    (["validate", "--bogus"], ["--bogus"]),
])
def test_usage_errors_are_one_line_everywhere(args, words):
    one_line_error(run(*args), *words)


def test_groups_without_a_command_still_show_help():
    r = run("cascades")
    assert "Usage:" in r.output and "Traceback" not in r.output


def test_gqa_heads_mismatch():
    if "--kv-heads" not in run("evaluate", "--help").output:
        pytest.skip("evaluate has no --kv-heads")
    one_line_error(run("evaluate", "attention-gqa", "--heads", "7", "--kv-heads", "2"),
                   "heads (7)", "kv-heads (2)")


def test_split_kv_beyond_the_key_blocks_is_refused():
    """--split-kv larger than the key blocks was silently capped; now one line with both."""
    from click.testing import CliRunner

    from iosim.cli import main
    res = CliRunner().invoke(main, ["evaluate", "decode-splitk", "--seq-len", "1",
                                    "--kv-len", "1024", "--split-kv", "1000"])
    assert res.exit_code == 2
    assert "--split-kv 1000 exceeds the 16 key blocks" in res.output
    assert "Traceback" not in res.output


def test_size_suffixes_on_every_command():
    """1K / 128K / 1M are accepted wherever a size is asked for."""
    from click.testing import CliRunner

    from iosim.cli import main
    for args in (["cascades", "passes", "attention-3pass", "--seq-len", "4K"],
                 ["evaluate", "--seq-len", "1M", "--kv-len", "128K"],
                 ["codegen", "attention-1pass", "--head-dim", "64", "--block-m", "128"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args, res.output)
