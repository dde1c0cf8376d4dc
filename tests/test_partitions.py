"""The H100's two L2 partitions: the latency map (recorded), what it explains in the other
recorded microbenchmarks, and the dynamic model with the partitions modelled."""
import csv
import itertools
import os

import numpy as np
import pytest
from reference import balanced_set

from iosim.errors import IosimError
from iosim.l2.partitions import H100_SIDE_A, side_of, split
from iosim.l2.simulate import DISPATCH_ORDER, L2_SIDE_A, GpuL2, Workload, _predict_dynamic

DATA = os.path.join(os.path.dirname(__file__), "..", "experiments", "data")


def test_split_recovers_planted_groups():
    """Two groups of rows and of columns, 30 cycles apart where they differ, plus noise: the
    split finds both groups and the two latencies."""
    rng = np.random.default_rng(0)
    rows = rng.permutation(np.r_[np.zeros(20, int), np.ones(20, int)])
    rows[0] = 0
    cols = rng.integers(0, 2, 50)
    lat = 270 + 30 * (rows[:, None] != cols[None, :]) + rng.normal(0, 5, (40, 50))
    sp = split(lat)
    assert (sp.sm_side == rows).all() and (sp.line_side == cols).all()
    assert sp.near_cycles == pytest.approx(270, abs=2) and sp.far_cycles == pytest.approx(300, abs=2)
    with pytest.raises(ValueError):
        split(np.ones(5))


def test_latency_map_two_sides_of_66_sms():
    """Recorded on the H100 (experiments/device/l2_latency_map.py): in each of three launches
    the (SM, line) latencies split 66/66 SMs into the same two groups, lines answered ~30
    cycles sooner from their own side; the split is the one the model uses."""
    z = np.load(os.path.join(DATA, "gpu_l2_latency.npz"))
    assert "H100" in str(z["device"])
    assert tuple(H100_SIDE_A) == tuple(L2_SIDE_A) and len(H100_SIDE_A) == 66
    gap = []
    for rep in range(3):
        assert (z[f"blocks_{rep}"] >= 4).all()                  # every SM measured
        sp = split(z[f"chain_{rep}"])
        assert tuple(np.flatnonzero(sp.sm_side == 0)) == tuple(H100_SIDE_A)
        assert sp.far_cycles - sp.near_cycles > 20
        assert sp.residual_cycles < (sp.far_cycles - sp.near_cycles) / 2
        # the first load of a line shows the same split: no near copy after one far read
        first = split(z[f"first_{rep}"])
        assert (first.sm_side == sp.sm_side).all()
        gap.append(sp.far_cycles - sp.near_cycles)
        # which side a line lives on alternates in 256-byte steps: consecutive 128-byte lines
        # come in pairs, and half of the lines live on each side
        off = z["line_bytes"]
        consecutive = np.flatnonzero(np.diff(off[:64]) == 128)
        side = sp.line_side
        assert all(side[i] == side[i + 1] for i in range(0, 64, 2))
        assert len(consecutive) == 63 and 0.4 < side.mean() < 0.6
    assert max(gap) - min(gap) < 1.0


def test_latency_map_differs_between_machines():
    """A second H100 (gpu_l2_latency_2.npz, the session's second machine): the same two-block
    structure and latencies, a stable split in three launches -- but another one: 64 SMs on
    side A, and only 23% of the SMs agree with the first machine's (so a side map belongs to a
    machine). On both, each 16-SM GPC (SM ids 16g .. 16g+15, g < 4) has 8 SMs on each side."""
    z = np.load(os.path.join(DATA, "gpu_l2_latency_2.npz"))
    splits = [split(z[f"chain_{rep}"]) for rep in range(3)]
    a2 = [tuple(np.flatnonzero(sp.sm_side == 0)) for sp in splits]
    assert a2[0] == a2[1] == a2[2]
    assert all(25 < sp.far_cycles - sp.near_cycles < 35 for sp in splits)
    one = side_of(np.arange(132))
    two = side_of(np.arange(132), a2[0])
    assert 0.1 < (one == two).mean() < 0.5
    for s in (one, two):
        for g in range(4):
            assert s[16 * g:16 * g + 16].sum() == 8
    # a third machine (the query-cliff call) splits as the first
    z3 = np.load(os.path.join(DATA, "gpu_l2_latency_3.npz"))
    assert tuple(np.flatnonzero(split(z3["chain_0"]).sm_side == 0)) == tuple(H100_SIDE_A)


def _groups(sms: str):
    out = []
    for part in sms.split():
        lo, hi = (int(x) for x in part.split("-"))
        out += list(range(lo, hi + 1))
    return out


def test_sides_microbenchmark_explained_by_the_map():
    """gpu_l2sides.csv (an earlier session, another machine): a 30 MiB buffer re-read only by
    the SMs of a group. By the first machine's latency map, a group whose SMs all sit on one
    side keeps the lines that live on the other side (nothing else is read there): half of the
    re-read misses; a group on both sides misses all of it. Every GPC straddles both sides."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_l2sides.csv"))))
    one_side = both = 0
    for r in rows:
        sides = set(side_of(_groups(r["sms"])).tolist())
        miss = float(r["miss_fraction"])
        if len(sides) == 1:
            one_side += 1
            assert miss == pytest.approx(0.5, abs=0.02), r["sms"]
        else:
            both += 1
            assert miss == pytest.approx(1.0, abs=0.02), r["sms"]
    assert one_side == 2 and both == len(rows) - 2


def test_dispatch_order_pairs_and_sides():
    """The first wave's dispatch order covers every SM once, and every recorded first wave of
    a d=128 launch (one block per SM) is it: SMs 124-131, then the same cycle of SM pairs
    entered at another point; consecutive block ids land on runs of SMs of one side (why the
    readers rule's small groups cost like one-side lines)."""
    assert sorted(DISPATCH_ORDER) == list(range(132))
    tail = list(DISPATCH_ORDER[8:])
    cycle = {tuple(tail[i:] + tail[:i]) for i in range(len(tail))}
    waves = []
    for name in ("gpu_traced", "gpu_traced_rounds"):
        z = np.load(os.path.join(DATA, f"{name}.npz"))
        for r in csv.DictReader(open(os.path.join(DATA, f"{name}.csv"))):
            if r["head_dim"] == "128":
                waves.append(tuple(int(x) for x in z[r["trace_key"]][:132, 2]))
    assert len(waves) >= 30
    assert all(w[:8] == DISPATCH_ORDER[:8] and w[8:] in cycle for w in waves)
    assert tuple(DISPATCH_ORDER) in waves
    s = side_of(DISPATCH_ORDER)
    runs = np.diff(np.flatnonzero(np.r_[1, np.diff(s) != 0, 1]))
    assert runs.min() >= 4 and runs.mean() > 10


@pytest.mark.slow
def test_partitions_model_fits_and_shared():
    """With the partitions modelled (each an LRU with the measured response): a launch whose
    K/V fit reads Q+K+V once; a query-major launch, whose every K/V line is read from both
    sides (so held in both partitions, as a shared line), predicts what the shared-line model
    does (within 1%). The default's NRU state reads the first within 0.5% of Q+K+V."""
    resp = GpuL2(kv_weight="partitions", l2_policy="response")
    w = Workload(2, 16, 8192, 8192, 128, causal=False, grid_order="query-major")
    qkv = 3 * 2 * 16 * 8192 * 128 * 2
    assert _predict_dynamic(w, resp)["dram_read_bytes"] == pytest.approx(qkv, rel=1e-3)
    assert _predict_dynamic(w, GpuL2())["dram_read_bytes"] == pytest.approx(qkv, rel=5e-3)
    w = Workload(1, 8, 32768, 32768, 128, causal=False, grid_order="query-major")
    qkv = 3 * 8 * 32768 * 128 * 2
    part = _predict_dynamic(w, resp)["dram_read_bytes"]
    shared = _predict_dynamic(w, GpuL2(kv_weight="shared"))["dram_read_bytes"]
    assert part > 1.5 * qkv                              # K/V re-read: above the cliff
    assert part == pytest.approx(shared, rel=0.01)


def test_partitions_option_validated():
    with pytest.raises(IosimError, match="partitions"):
        GpuL2(kv_weight="sides-and-more")


def test_partition_replay_table():
    """experiments/l2_research/partition_replay.py's recorded table (gpu_partition_replay.csv): its
    counters are the traced runs' own, its errors follow from its columns, and the headline of
    docs/notes/l2_research_history.md holds: on the 70 earlier traces two partitions (either
    machine's map)
    are within 15% on 65, the readers-rule replay on 64, the one-side control on 53; on the
    traced launches of rounds 7-8 on 13 of 15."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_partition_replay.csv"))))
    assert len(rows) == 93
    traced = {}
    for name in ("gpu_traced", "gpu_traced_rounds", "gpu_traced_round6", "gpu_traced_rounds78"):
        for r in csv.DictReader(open(os.path.join(DATA, f"{name}.csv"))):
            traced[(name, r["trace_key"])] = float(r["dram_read_bytes"])
    for r in rows:
        meas = float(r["meas_dram_read_bytes"])
        assert meas == traced[(r["traced"], r["launch"])]
        for c in ("partitions_map1", "partitions_map2", "partitions_one_side", "readers_replay"):
            assert float(r[f"err_{c}"]) == pytest.approx(float(r[c]) / meas - 1, abs=1e-6)
    early = [r for r in rows if r["traced"] not in ("gpu_traced_round6", "gpu_traced_rounds78")]

    def within(c, sel=early):
        return sum(abs(float(r[f"err_{c}"])) <= 0.15 for r in sel)
    assert within("partitions_map1") == within("partitions_map2") == 65
    assert within("readers_replay") == 64 and within("partitions_one_side") == 53
    # rounds 7-8 traced in a later session: 13 of 15 (the 16th is over 2^19 query rows x heads)
    late = [r for r in rows if r["traced"] == "gpu_traced_rounds78"]
    assert len(late) == 15 and within("partitions_map1", late) == 13


def test_validate_cli_kv_cost(tmp_path):
    """`iosim validate --kv-cost partitions` (the default) compares the recorded counters with
    the partitions model (the same prediction as GpuL2(kv_weight="partitions")), `--kv-cost
    readers` with the readers rule, `--l2-policy nru` with the NRU cache state; another K/V
    cost or NRU with a non-dynamic model is a one-line error."""
    import json

    from click.testing import CliRunner

    from iosim.cli import main
    from iosim.l2.simulate import predict_dram
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_ncu.csv"))))
    sel = [r for r in rows if r["impl"] == "generated" and r["cascade"] == "attention-1pass"
           and (r["batch"], r["seq"], r["head_dim"], r["causal"]) == ("8", "1024", "64", "False")]
    assert len(sel) == 2
    path = tmp_path / "sub.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sel)
    got = {}
    for kv in ("readers", "partitions"):
        res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--kv-cost", kv,
                                        "--l2-policy", "response", "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        got[kv] = {r["grid_order"]: r["pred_dram_read_bytes"] for r in out["rows"]}
    # --l2-policy response: the model before round 11 (fetches stop at chunk ends, the rates
    # without the blocks' startup)
    from iosim.l2.simulate import FIRST_CLEAR_NO_STARTUP
    before = GpuL2(l2_policy="response", prefetch_across_chunks=False, **FIRST_CLEAR_NO_STARTUP)
    wl = Workload(8, 16, 1024, 1024, 64, causal=False, grid_order="head-major")
    assert got["partitions"]["head-major"] == pytest.approx(
        predict_dram(wl, before)["dram_read_bytes"], rel=1e-12)
    assert got["partitions"]["head-major"] > 1.1 * got["readers"]["head-major"]
    # --kv-cost readers alone is the readers rule with the response
    res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--kv-cost", "readers",
                                    "--json"])
    assert {r["grid_order"]: r["pred_dram_read_bytes"]
            for r in json.loads(res.output)["rows"]} == got["readers"]
    res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--kv-cost", "readers",
                                    "--model", "lockstep"])
    assert res.exit_code != 0 and "needs the dynamic L2 model" in res.output
    # the default (and --l2-policy nru): the NRU cache state with hashed sets and fetches across
    # chunk ends, as GpuL2() predicts
    for extra in ([], ["--l2-policy", "nru"]):
        res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--json", *extra])
        assert res.exit_code == 0, res.output
        nru = {r["grid_order"]: r["pred_dram_read_bytes"]
               for r in json.loads(res.output)["rows"]}
        assert nru["head-major"] == pytest.approx(predict_dram(wl)["dram_read_bytes"],
                                                  rel=1e-12)
        assert nru["head-major"] != got["partitions"]["head-major"]
    for bad in (["--kv-cost", "readers"], ["--model", "lru"]):
        res = CliRunner().invoke(main, ["validate", "--l2", "simulate",
                                        "--csv", str(path), "--l2-policy", "nru",
                                        *bad])
        assert res.exit_code != 0 and "--l2-policy nru needs" in res.output
        assert "Traceback" not in res.output


#: the variants of experiments/l2_research/partition_variants.py, as its CSV's columns
VARIANTS_RECORDED = ("refresh", "copy-serves", "copy-on-fill", "half-refresh")


def test_partition_variants_table():
    """experiments/l2_research/partition_variants.py's recorded table (gpu_partition_variants.csv):
    its
    'refresh' replays are the model's (gpu_partition_replay.csv, computed by the other C
    helper), its measured values are the recorded counters and microbenchmarks, and the
    headline of docs/notes/l2_research_history.md holds: no copy variant fits both the lock-step
    and the
    staggered microbenchmarks; 'copy-serves' fits the staggered ones, the mix and the one-head
    query-major cliff (8 of 8) where the model does not (5 of 8), but not the lock-step ones."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_partition_variants.csv"))))
    micro = [r for r in rows if r["kind"] == "microbenchmark"]
    rep = [r for r in rows if r["kind"] == "attention replay"]
    assert len(micro) == 51 and len(rep) == 110
    base = {(r["traced"], r["launch"]): r for r in
            csv.DictReader(open(os.path.join(DATA, "gpu_partition_replay.csv")))}
    checked = 0
    for r in rep:
        traced, launch = r["case"].split(":")
        if traced in ("gpu_query_cliff", "gpu_query_heads"):
            meas = {x["trace_key"]: float(x["dram_read_bytes"]) for x in
                    csv.DictReader(open(os.path.join(DATA, f"{traced}.csv")))}[launch]
            assert float(r["measured"]) == meas
            continue
        b = base[(traced, launch)]
        assert float(r["measured"]) == float(b["meas_dram_read_bytes"])
        col = "err_partitions_map2" if traced == "gpu_traced_round6" else "err_partitions_map1"
        assert float(r["refresh"]) == pytest.approx(float(b[col]), abs=2e-4)
        checked += 1
    assert checked == 93
    scan = {int(x["mib"]): float(x["miss_fraction"]) for x in
            csv.DictReader(open(os.path.join(DATA, "gpu_l2scan.csv"))) if x["mode"] == "private"}
    for r in micro:
        if r["case"].startswith("private scan"):
            assert float(r["measured"]) == scan[int(r["case"].split()[2])]

    def fam_err(fam, v):
        sel = [r for r in micro if r["family"] == fam]
        return np.mean([abs(float(r[v]) - float(r["measured"])) for r in sel])
    # the calibration holds for the model and copy-serves (sides alternating)
    assert fam_err("shared scan (calibration)", "refresh") < 0.02
    assert fam_err("shared scan (calibration)", "copy-serves") < 0.02
    # staggered readers and the mix: copy-serves close, the model far off
    assert fam_err("k readers one after another", "copy-serves") < 0.2 < 1.0 < \
        fam_err("k readers one after another", "refresh")
    assert fam_err("mix (hot + cold)", "copy-serves") < 0.2 < 0.4 < fam_err("mix (hot + cold)",
                                                                            "refresh")
    # readers in lock step: the model close, copy-serves not
    assert fam_err("k readers in lock step", "refresh") < 0.1 < 0.15 < \
        fam_err("k readers in lock step", "copy-serves")

    def within(v, sel=rep):
        return sum(abs(float(r[v])) <= 0.15 for r in sel)
    cliff = [r for r in rep if r["case"].startswith("gpu_query_cliff")]
    assert within("refresh") == 94 and within("copy-serves") == 95
    assert within("refresh", cliff) == 5 and within("copy-serves", cliff) == 8
    # 1-8 heads at 64K on one machine: every variant under-counts more the more heads
    heads = {r["case"].split(":")[1]: r for r in rep if r["case"].startswith("gpu_query_heads")}
    for v in VARIANTS_RECORDED:
        assert float(heads["1x8x65536x128-causal_query-major"][v]) < -0.25 < \
            float(heads["1x1x65536x128-causal_query-major"][v])


def test_query_heads_runs():
    """gpu_query_heads_runs.csv (experiments/device/query_cliff.py heads, three runs on one
    H100): causal query-major at 64Kx128 reads more per head the more heads a launch has (one
    head 1.22x Q+K+V in every run, eight 1.47-1.58x), at 56K one head ~1.0x, four and eight
    1.1x; run 0 is the traced gpu_query_heads.csv; the machine's L2 side map is the first
    machine's (gpu_l2_latency_4.npz)."""
    from iosim.l2.partitions import split
    from iosim.l2.simulate import L2_SIDE_A
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_query_heads_runs.csv"))))
    assert len(rows) == 27
    ratio = {}
    for r in rows:
        qkv = 3 * int(r["batch"]) * int(r["heads"]) * int(r["seq"]) * int(r["head_dim"]) * 2
        ratio.setdefault((int(r["heads"]), int(r["seq"])), []).append(
            float(r["dram_read_bytes"]) / qkv)
    assert all(len(v) == 3 for v in ratio.values())
    assert max(ratio[(1, 65536)]) - min(ratio[(1, 65536)]) < 0.005
    assert 1.2 < min(ratio[(1, 65536)]) and max(ratio[(1, 65536)]) < 1.23
    assert min(ratio[(8, 65536)]) > 1.45 and min(ratio[(6, 65536)]) > 1.3
    assert np.median(ratio[(8, 65536)]) > np.median(ratio[(1, 65536)]) + 0.25
    assert max(ratio[(1, 57344)]) < 1.03 and min(ratio[(8, 57344)]) > 1.1
    traced = {r["trace_key"]: float(r["dram_read_bytes"]) for r in
              csv.DictReader(open(os.path.join(DATA, "gpu_query_heads.csv")))}
    assert {r["trace_key"]: float(r["dram_read_bytes"]) for r in rows if r["run"] == "0"} == traced
    sp = split(np.load(os.path.join(DATA, "gpu_l2_latency_4.npz"))["chain_0"])
    assert tuple(np.flatnonzero(sp.sm_side == 0).tolist()) == L2_SIDE_A


def _policy_reference(ev, cap_bytes, ways, policy, balanced=False):
    """Brute-force LRU / NRU of experiments/l2_research/csrc/l2_policy.c's layout (4 KiB units,
    unit u of
    a tile homed in partition u % 2, a far-side copy in the reader's partition), one list of
    ways per set; the set of a unit pair is linear or (``balanced``) reference.balanced_set."""
    unit = 4096
    nset = max(int(cap_bytes / unit / ways), 1)
    parts = [[[] for _ in range(nset)] for _ in range(2)]     # per set: [key, used bit, stamp]
    clock = [0, 0]
    hands = [[0] * nset for _ in range(2)]                     # CLOCK's hand per set

    def access(p, key):
        clock[p] += 1
        pair = key >> 2
        si = balanced_set(pair, nset) if balanced else pair % nset
        ws = parts[p][si]
        for w in ws:
            if w[0] == key:
                w[1], w[2] = 1, clock[p]
                return 0
        line = [key, 1, clock[p], clock[p]]             # key, used bit, last use, fill
        if len(ws) < ways:
            ws.append(line)
        elif policy == "lru":
            ws[min(range(ways), key=lambda i: ws[i][2])] = line
        elif policy == "fifo":                          # by fill time: hits do not count
            ws[min(range(ways), key=lambda i: ws[i][3])] = line
        elif policy == "clock":
            h = hands[p][si]
            while ws[h][1]:
                ws[h][1] = 0
                h = (h + 1) % ways
            ws[h] = line
            hands[p][si] = (h + 1) % ways
        else:
            free = [i for i in range(ways) if not ws[i][1]]
            if not free:
                for w in ws:
                    w[1] = 0
                free = [0]
            ws[free[0]] = line
        return 1
    dram = 0.0
    for tile, side, nb, kv in ev:
        nu = max(-(-nb // unit), 2)
        for u in range(nu):
            key = (tile * nu + u) * 2
            miss = access(u & 1, key)
            if (u & 1) != side:
                access(side, key + 1)
            if kv and miss:
                dram += nb / nu
    return dram


def test_l2_policy_helper_against_brute_force(tmp_path):
    """experiments/l2_research/csrc/l2_policy.c (LRU, NRU, FIFO and CLOCK caches of two partitions)
    against
    an independent brute-force implementation on random event streams small enough to
    thrash."""
    import shutil
    import subprocess
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    src = os.path.join(DATA, "..", "l2_research", "csrc", "l2_policy.c")
    exe = str(tmp_path / "l2_policy")
    subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
    rng = np.random.default_rng(3)
    for trial in range(4):
        n_tiles = int(rng.integers(20, 60))
        ev = np.c_[rng.integers(0, n_tiles, 400), rng.integers(0, 2, 400),
                   rng.choice([8192, 16384, 32768], 400), rng.integers(0, 2, 400)]
        f = tmp_path / f"ev{trial}.bin"
        ev.astype(np.int64).tofile(f)
        for (num, policy), hashed in itertools.product(
                ((0, "lru"), (2, "nru"), (7, "fifo"), (8, "clock")), (0, 2)):
            out = subprocess.run([exe, str(f), str(n_tiles), str(num), "0.25", "4", "3", "0",
                                  str(hashed)], check=True, capture_output=True, text=True).stdout
            ref = _policy_reference(ev.tolist(), 0.25 * 2 ** 20, 4, policy, hashed == 2)
            assert 0 < ref < sum(e[2] for e in ev.tolist() if e[3])
            assert float(out) == pytest.approx(ref, abs=0.5), (trial, policy, hashed)


def test_l2_policy_table():
    """experiments/l2_research/l2_policy.py's recorded table (gpu_l2_policy.csv): its measured
    values are
    the recorded counters, and the headline of docs/notes/l2_research_history.md holds: on the
    measured
    schedules an NRU cache state (26 MiB per partition, 16 ways, nothing fitted) is within 15%
    on all nine 1-8-head causal query-major launches, where the same cache under LRU is on 3;
    it moves the validated 1x8x64Kx128 causal query-major replay from about -30% to within 10%.
    The same holds with a balanced set hash (what the set-conflict probe allows; LRU with it
    stays at 3), and NRU with it is within 15% on more of the 110 launches than LRU is."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_l2_policy.csv"))))
    rep = [r for r in rows if r["kind"] == "attention replay"]
    assert len(rep) == 110
    heads = {x["trace_key"]: float(x["dram_read_bytes"]) for x in
             csv.DictReader(open(os.path.join(DATA, "gpu_query_heads.csv")))}
    sel = [r for r in rep if r["case"].startswith("gpu_query_heads")]
    assert len(sel) == 9
    for r in sel:
        assert float(r["measured"]) == heads[r["case"].split(":")[1]]
    assert sum(abs(float(r["nru"])) <= 0.15 for r in sel) == 9
    assert sum(abs(float(r["lru"])) <= 0.15 for r in sel) == 3
    assert sum(abs(float(r["nru_balanced"])) <= 0.15 for r in sel) == 9
    assert sum(abs(float(r["lru_balanced"])) <= 0.15 for r in sel) == 3
    val = {r["case"]: r for r in rep}["gpu_traced:1x8x65536x128-causal_query-major"]
    assert float(val["lru"]) < -0.25 and abs(float(val["nru"])) < 0.1
    assert abs(float(val["nru_balanced"])) < 0.1

    def within(col):
        return sum(abs(float(r[col])) <= 0.15 for r in rep)
    assert within("nru_balanced") > within("nru") > within("lru")
    assert within("nru_balanced") > max(within("nru_balanced_8way"),
                                        within("nru_balanced_32way"))
    # DRRIP fits the staggered readers and the mix but keeps the hot set of the hot/stream
    # test whole, where the GPU loses most of it past 16+16 MiB; NRU with the balanced hash
    # is the closest there
    micro = [r for r in rows if r["kind"] == "microbenchmark"]
    hot = {r["case"]: (r, float(r["measured"])) for r in micro
           if r["family"] == "hot set + stream"}
    meas = {f"{r['hot_mib']}+{r['stream_mib']} MiB": float(r["hot_reread_miss_fraction"]) for r in
            csv.DictReader(open(os.path.join(DATA, "gpu_l2hot.csv")))}
    assert len(hot) == 7 and all(m == meas[c] for c, (_, m) in hot.items())

    def err(fam, col):
        sel = [r for r in micro if r["family"] == fam]
        return np.mean([abs(float(r[col]) - float(r["measured"])) for r in sel])
    assert err("hot set + stream", "drrip_balanced") > 0.5
    assert err("hot set + stream", "nru_balanced") < min(
        err("hot set + stream", c) for c in ("lru", "nru", "lru_balanced", "drrip_balanced"))
    for fam in ("k readers one after another", "mix (hot + cold)"):
        assert err(fam, "drrip_balanced") < 0.25 * err(fam, "lru")
    # CLOCK (the same used bits, the victim found by a hand per set): within 15% on 109 of
    # the 110 replays, the NRU state's calibration on the shared scan and its hot/stream
    # answer; tree pseudo-LRU keeps a cyclic scan the GPU loses; FIFO loses the head changes
    assert within("clock_balanced") == 109 > within("plru_balanced") > within("nru_balanced")
    assert sum(abs(float(r["clock_balanced"])) <= 0.15 for r in sel) == 9
    assert sum(abs(float(r["fifo_balanced"])) <= 0.15 for r in sel) == 0
    for fam in ("shared scan (calibration)", "hot set + stream"):
        assert err(fam, "clock_balanced") == pytest.approx(err(fam, "nru_balanced"))
    scan = {r["case"]: r for r in micro if r["family"] == "shared scan (calibration)"}
    assert float(scan["30 MiB"]["measured"]) > 0.99 and float(scan["30 MiB"]["plru_balanced"]) < 0.3
    assert err("hot set + stream", "plru_balanced") > 0.4


def test_l2_hints_recorded():
    """gpu_l2_hints.csv and gpu_l2_hints_1.csv (experiments/device/l2_hints.py, two H100
    machines, two rounds each) and gpu_l2hotwrite.csv: with Q and O marked evict_first the
    non-causal 1x16x16Kx128 query-major launch reads Q+K+V and no more (the model's 1.00x),
    unhinted 1.07-1.16x; either hint alone removes part of the excess; the one-head 64K causal
    query-major excess (1.2x) does not move with any hint; a written stream pushes a hot set
    out about as a read one does."""
    def qkv(shape):
        b, h, n, d = (int(x) for x in shape.split("-")[0].split("x"))
        return 3 * b * h * n * d * 2
    for name in ("gpu_l2_hints.csv", "gpu_l2_hints_1.csv"):
        rows = list(csv.DictReader(open(os.path.join(DATA, name))))
        by = {}
        for r in rows:
            key = (r["shape"], r["grid_order"], r["kv_eviction"], r["q_eviction"],
                   r["o_eviction"])
            by.setdefault(key, []).append(float(r["dram_read_bytes"]) / qkv(r["shape"]))
        assert all(len(v) == 2 for v in by.values())
        q16 = ("1x16x16384x128", "query-major")
        assert all(1.06 < x < 1.17 for x in by[(*q16, "none", "none", "none")])
        assert all(0.999 < x < 1.015 for x in by[(*q16, "none", "evict_first", "evict_first")])
        one = ("1x1x65536x128-causal", "query-major")
        for hint in [k[2:] for k in by if k[:2] == one]:
            assert all(1.14 < x < 1.26 for x in by[(*one, *hint)])
        if name == "gpu_l2_hints.csv":
            assert all(1.02 < x < 1.05 for x in by[(*q16, "none", "evict_first", "none")])
            assert all(1.08 < x < 1.10 for x in by[(*q16, "none", "none", "evict_first")])
    hw = {(r["mode"], int(r["stream_mib"])): float(r["hot_reread_miss_fraction"])
          for r in csv.DictReader(open(os.path.join(DATA, "gpu_l2hotwrite.csv")))}
    for mode in ("read", "write"):
        assert hw[(mode, 4)] < 0.01 and hw[(mode, 24)] > 0.99
    assert abs(hw[("read", 16)] - hw[("write", 16)]) < 0.1


def test_l2_policy_round14_traced():
    """`l2_policy.py --traced gpu_traced_round14` (gpu_l2_policy_gpu_traced_round14.csv): round
    14's eight launches traced under ncu after they were registered; CLOCK on the measured
    schedules is within 15% of each traced run's counters on 7 of 8 (with the 110 of the main
    table: 116 of 118). The miss is 3x8x6Kx64 causal head-major, +53%: at the capacity edge the
    set-associative answers scatter (first-clear NRU with the balanced hash +17%, CLOCK +53%,
    FIFO +91%) around the measured bytes, a plain LRU under-counts (-38%) -- the cache half, not
    the schedule, misses there."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_l2_policy_gpu_traced_round14.csv"))))
    traced = {r["trace_key"]: float(r["dram_read_bytes"]) for r in
              csv.DictReader(open(os.path.join(DATA, "gpu_traced_round14.csv")))}
    assert len(rows) == 8 and {r["case"].split(":")[1] for r in rows} == set(traced)
    for r in rows:
        assert float(r["measured"]) == traced[r["case"].split(":")[1]]
    assert sum(abs(float(r["clock_balanced"])) <= 0.15 for r in rows) == 7
    edge = {r["case"].split(":")[1]: r for r in rows}["3x8x6144x64-causal_head-major"]
    assert float(edge["clock_balanced"]) > 0.5 and float(edge["lru"]) < -0.3
    assert 0.15 < float(edge["nru_balanced"]) < 0.2 and float(edge["fifo_balanced"]) > 0.9


def test_l2_policy_round15_traced():
    """`l2_policy.py --traced gpu_traced_round15`: round 15's eight launches traced in the same
    call that measured them; CLOCK on the measured schedules is within 2.5% of each traced
    run's counters on all 8 (124 of the 126 traced launches) -- including the two d=64 causal
    head-major launches the default over-counts by 26-29% on its own schedule: there the
    schedule misses, not the cache."""
    rows = list(csv.DictReader(open(os.path.join(DATA, "gpu_l2_policy_gpu_traced_round15.csv"))))
    assert len(rows) == 8
    assert all(abs(float(r["clock_balanced"])) < 0.025 for r in rows)


def test_l2_policy_round16_traced():
    """`l2_policy.py --traced gpu_traced_round16`: round 16's eight launches traced on the same
    machine right after they were measured (a second call); CLOCK on the measured schedules is within 15% of each traced run's
    counters on all 8 (132 of the 134 traced launches), within 3.5% on the two d=64 causal
    head-major thrash launches the default over-counts by 20-32% on its own schedule."""
    rows = {r["case"].split(":")[1]: r for r in csv.DictReader(
        open(os.path.join(DATA, "gpu_l2_policy_gpu_traced_round16.csv")))}
    assert len(rows) == 8
    assert all(abs(float(r["clock_balanced"])) <= 0.15 for r in rows.values())
    for s in ("1x6x57344x64-causal_head-major", "1x10x32768x64-causal_head-major"):
        assert abs(float(rows[s]["clock_balanced"])) < 0.035
