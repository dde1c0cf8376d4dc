"""Device (run on the GPU machine from the repository root:
python experiments/device/measure_unseen.py 360 [experiments/data/gpu_unseen2.csv]): profile the
generated attention-1pass kernel for the pre-registered unseen shapes of one round, in the CSV's
order, one ncu run per shape (3 metrics, no metric query), partial results kept."""
import csv, json, os, subprocess, sys, time
sys.path.insert(0, os.getcwd())
from iosim.gpu.runner import Config, precompile
from iosim.gpu.shapes import Shape
from iosim.gpu.validate import VALIDATION_TILING
from iosim.gpu import ncu

def main():
    global LOG, T0
    OUT = os.environ["OUT"]; T0 = time.time(); DEADLINE = float(sys.argv[1]) if len(sys.argv) > 1 else 440
    LOG = open(os.path.join(OUT, "log.txt"), "a")
    def log(*a):
        m = f"[{time.time() - T0:6.1f}s] " + " ".join(str(x) for x in a); print(m, flush=True); LOG.write(m + "\n"); LOG.flush()
    METRICS = ["dram__bytes_read.sum", "l1tex__m_xbar2l1tex_read_bytes.sum", "gpu__time_duration.sum"]
    path = sys.argv[2] if len(sys.argv) > 2 else "experiments/data/gpu_unseen.csv"
    pre = {r["shape"]: r for r in csv.DictReader(open(path))}
    ORDER = list(pre)
    cfgs = []
    for lab in ORDER:
        r = pre[lab]
        s = Shape(int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["head_dim"]), r["causal"] == "True")
        cfgs.append((lab, Config("generated", s, grid_order=r["grid_order"], **VALIDATION_TILING)))
    t = time.time(); precompile([c for _, c in cfgs]); log("precompile", round(time.time() - t, 1), "s")
    rows = []; raw = os.path.join(OUT, "raw"); os.makedirs(raw, exist_ok=True)
    for lab, cfg in cfgs:
        left = DEADLINE - (time.time() - T0)
        if left < 25:
            log("skip", lab, "no time left"); continue
        work = os.path.join(raw, lab)
        t = time.time()
        try:
            s = ncu.profile([cfg], work, timeout=min(110, left - 5), metrics=METRICS)[0]
            row = {"shape": lab, "grid_order": cfg.grid_order, "meas_dram_read_bytes": s["dram_read_bytes"],
                   "meas_l2_to_sm_read_bytes": s["l1_from_l2_read_bytes"], "meas_time_ns": s["time_ns"],
                   "kernels": s["kernels"], "device": s["device"]}
            rows.append(row); log("done", lab, round(time.time() - t, 1), "s", json.dumps(row))
        except Exception as e:  # noqa
            log("FAIL", lab, round(time.time() - t, 1), "s", type(e).__name__, str(e)[:300])
        with open(os.path.join(OUT, "unseen_meas.csv"), "w", newline="") as f:
            if rows:
                w = csv.DictWriter(f, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
    log("total", round(time.time() - T0, 1))
    subprocess.run(f"tar czf {OUT}/raw.tgz -C {OUT} raw && rm -rf {raw}", shell=True)


if __name__ == '__main__':   # precompile() uses a spawn pool: without this guard it re-runs the script forever
    main()
