"""Tests of iosim.sweep and `iosim sweep`: value parsing, vectorised evaluation against hand
counts, atomic resumable CSV writing, figures, one-line errors."""
from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from iosim.errors import IosimError
from iosim.sweep import SweepSpec, parse_counts, parse_srams, resolve_algorithm, run_sweep


# ----------------------------------------------------------------- parsing


def test_parse_counts():
    assert parse_counts("1K,4K,16K") == [1024, 4096, 16384]
    assert parse_counts("1K:64K:x2") == [2**k for k in range(10, 17)]
    assert parse_counts("256:1024:+256") == [256, 512, 768, 1024]
    assert parse_counts("4096, 1K ,1024") == [1024, 4096]          # sorted, distinct
    assert parse_counts("1M") == [2**20]
    assert parse_counts(["1K", "2K"]) == [1024, 2048]


def test_parse_srams():
    assert parse_srams("64KiB:1MiB:x2", "bf16") == [65536.0 * 2**k for k in range(5)]
    assert parse_srams("4096el", "bf16") == [8192.0]
    assert parse_srams("4096el", "fp32") == [16384.0]
    assert parse_srams("100KB,192KiB", "bf16") == [100_000.0, 196_608.0]
    assert parse_srams("16KiB:64KiB:+16KiB", "bf16") == [16384.0, 32768.0, 49152.0, 65536.0]
    assert parse_srams("1024el:4096el:x4", "fp16") == [2048.0, 8192.0]


@pytest.mark.parametrize("text", ["", "abc", "0", "1.5", "4K:1K:x2", "1:10:x1", "1K,,2K",
                                  "1:2:3:4", "1K:", "1:1000000000:+1", "-4", "1K:4K:xq"])
def test_parse_counts_errors(text):
    with pytest.raises(IosimError) as e:
        parse_counts(text, "--seq-len")
    msg = str(e.value)
    assert msg.startswith("--seq-len") and "\n" not in msg


@pytest.mark.parametrize("text", ["64", "64KiB:1MiB", "64 parsecs", "-5KiB", "1MiB:64KiB:x2",
                                  "64KiB:1MiB:x2KiB", "0B", "16KiB:64KiB:+0B"])
def test_parse_srams_errors(text):
    with pytest.raises(IosimError) as e:
        parse_srams(text, "bf16")
    assert str(e.value).startswith("--sram") and "\n" not in str(e.value)


def test_resolve_algorithm():
    a = resolve_algorithm("fa1")
    assert (a.cascade, a.mapping) == ("flash1", "fa1")
    a = resolve_algorithm("attention-1pass")
    assert a.mapping == "best" and a.searched
    a = resolve_algorithm("attention-1pass", "fa2")
    assert a.mapping == "fa2" and a.label == "attention-1pass:fa2"
    assert resolve_algorithm("attention-1pass:saha-ye").mapping == "saha-ye"
    with pytest.raises(IosimError, match="did you mean"):
        resolve_algorithm("fa9")
    with pytest.raises(IosimError, match="mapping linear needs linear attention"):
        resolve_algorithm("attention-1pass:linear")
    with pytest.raises(IosimError, match="mapping fused-3pass needs a multi-pass softmax"):
        resolve_algorithm("attention-1pass", "fused-3pass")


# ----------------------------------------------------------------- evaluation


def _spec(**kw):
    base = dict(algorithms=(resolve_algorithm("fa2"), resolve_algorithm("saha-ye")),
                hardware="two-level", srams=(8192.0, 131072.0), seq_lens=(1000, 4096),
                head_dims=(64,), dtype="bf16")
    base.update(kw)
    return SweepSpec(**base)


def test_sweep_values_match_hand_counts(tmp_path):
    df = run_sweep(_spec(), tmp_path, progress=False)
    assert len(df) == 2 * 2 * 2
    row = df[(df.algorithm == "fa2") & (df.n == 1000) & (df.sram_bytes == 131072.0)].iloc[0]
    # FA-2 registry tiles Br = 128: Q and O once (2 N d), LSE (N), K and V per query block
    assert row.hbm_elements_per_head == 2 * 64000 + 1000 + 8 * 2 * 64000
    row = df[(df.algorithm == "saha-ye") & (df.n == 1000) & (df.sram_bytes == 8192.0)].iloc[0]
    # 8 KiB of bf16 = 4096 elements -> B = floor(sqrt(1024)) = 32; nb = 32, db = 2
    assert row.block_q == 32
    assert row.hbm_elements_per_head == 3 * 32 * 64000 + 3 * 1000**2 + 2 * 1000 + 64000
    # bytes >= elements * 2 (bf16 data; the row sums may be stored in fp32), one head
    assert 2 * row.hbm_elements_per_head <= row.hbm_bytes <= 2 * row.hbm_elements_per_head + 2 * 2000


def test_sweep_resumes_after_interruption(tmp_path):
    spec = _spec(srams=tuple(float(2**k) for k in range(11, 19)))
    total = spec.points()
    calls = []

    def boom(done, tot):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, progress=False, chunk_points=5, flush_seconds=0.0, on_chunk=boom)
    part = pd.read_csv(tmp_path / "sweep.csv")
    assert 0 < len(part) < total          # what was done survived, nothing half-written
    assert not list(tmp_path.glob(".sweep.csv.*"))  # no temporary file left behind
    seen = []
    full = run_sweep(spec, tmp_path, progress=False, on_chunk=lambda d, t: seen.append(t))
    assert seen and seen[-1] == total - len(part)   # only the missing points were evaluated
    disk = pd.read_csv(tmp_path / "sweep.csv")
    assert len(disk) == len(full) == total
    keys = disk[["algorithm", "sram_bytes", "n", "d"]].drop_duplicates()
    assert len(keys) == total
    # a rerun evaluates nothing
    again = []
    run_sweep(spec, tmp_path, progress=False, on_chunk=lambda d, t: again.append(d))
    assert again == []


def test_sweep_refuses_foreign_csv(tmp_path):
    (tmp_path / "sweep.csv").write_text("a,b\n1,2\n")
    with pytest.raises(IosimError, match="not a sweep CSV"):
        run_sweep(_spec(), tmp_path, progress=False)


# ----------------------------------------------------------------- CLI


def test_cli_sweep_writes_csv_and_figures(tmp_path):
    from iosim.cli import main

    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["sweep", "fa1", "fa2", "--sram", "16KiB:256KiB:x4",
                                  "--seq-len", "1K,2K", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == 2 * 3 * 2
    for f in ("sweep_vs_sram.png", "sweep_vs_seqlen.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args", [
    ["sweep", "fa9", "--seq-len", "1K"],
    ["sweep", "fa1", "--seq-len", "1K", "--sram", "64"],
    ["sweep", "fa1", "--seq-len", "0"],
    ["sweep", "fa1", "--seq-len", "1K", "--hw", "nope"],
    ["sweep", "fa1", "--seq-len", "1K", "--dtype", "fp7"],
])
def test_cli_sweep_errors_are_one_line(tmp_path, args):
    from iosim.cli import main

    out = tmp_path / "o"
    r = CliRunner().invoke(main, args + ["--out", str(out)])
    assert r.exit_code == 2
    assert r.output.startswith("error:") and r.output.count("\n") == 1
    assert not out.exists()
