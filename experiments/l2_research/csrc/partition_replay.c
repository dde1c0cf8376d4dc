// The cache response of the two L2 partitions on a measured schedule (experiments/partition_replay.py).
// Input: events in time order, int64 x 4: tile id, reader's L2 side (0/1), bytes, kind (1: a K/V
// read, whose DRAM bytes are counted; 0: a Q read or an O write, which only takes capacity).
// Each partition is an LRU of its own. Half of every tile lives in each partition; a touch by a
// block on side s touches both halves where they live and a copy of the far half in partition s.
// DRAM: for each half, m(distance) of its own partition (bytes of other items touched there since
// its last touch; m: the measured shared-scan curve) -- 1 on its first touch.
// Usage: partition_replay EVENTS N_TILES x0 y0 x1 y1 ... (curve points: bytes, miss fraction);
// prints the expected DRAM bytes of the K/V reads and the cold part of them.
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
static double *xs, *ys; static int ncur;
static double curve(double d) { if (d <= xs[0]) return ys[0]; for (int i = 1; i < ncur; i++) if (d <= xs[i]) return ys[i-1] + (ys[i]-ys[i-1]) * (d - xs[i-1]) / (xs[i]-xs[i-1]); return ys[ncur-1]; }
typedef struct { double *t; int64_t n, cap; double tot; int64_t *last; } Part;
static void add(Part *p, int64_t i, double v) { for (i++; i <= p->cap; i += i & -i) p->t[i] += v; }
static double pre(Part *p, int64_t i) { double r = 0; for (; i > 0; i -= i & -i) r += p->t[i]; return r; }
// touch key with weight w; returns distance (bytes of other items touched since), -1 if first
static double touch(Part *p, int64_t key, double w, double *wt) {
    int64_t l = p->last[key]; double d = -1;
    if (l >= 0) { d = p->tot - pre(p, l + 1); add(p, l, -wt[l]); p->tot -= wt[l]; }
    int64_t i = p->n++; wt[i] = w; add(p, i, w); p->tot += w; p->last[key] = i;
    return d;
}
int main(int argc, char **argv) {
    // argv: events.bin n_tiles curve_points... (x0 y0 x1 y1 ... as bytes,prob)
    FILE *f = fopen(argv[1], "rb"); int64_t ntile = atoll(argv[2]);
    ncur = (argc - 3) / 2; xs = malloc(ncur * sizeof(double)); ys = malloc(ncur * sizeof(double));
    for (int i = 0; i < ncur; i++) { xs[i] = atof(argv[3 + 2*i]); ys[i] = atof(argv[4 + 2*i]); }
    fseek(f, 0, SEEK_END); int64_t nev = ftell(f) / 32; fseek(f, 0, SEEK_SET);
    int64_t *ev = malloc(nev * 32); if (fread(ev, 32, nev, f) != (size_t)nev) return 2;
    Part P[2]; double *wt[2];
    for (int q = 0; q < 2; q++) {
        P[q].cap = 2 * nev + 8; P[q].t = calloc(P[q].cap + 1, sizeof(double)); P[q].n = 0; P[q].tot = 0;
        P[q].last = malloc(2 * ntile * sizeof(int64_t)); for (int64_t i = 0; i < 2 * ntile; i++) P[q].last[i] = -1;
        wt[q] = malloc(P[q].cap * sizeof(double));
    }
    double dram = 0, cold = 0;
    for (int64_t e = 0; e < nev; e++) {
        int64_t tile = ev[4*e], s = ev[4*e+1]; double b = (double)ev[4*e+2]; int kv = (int)ev[4*e+3];
        double h = b / 2;
        double d0 = touch(&P[0], 2 * tile + 0, h, wt[0]);     // home of half 0 in partition 0
        double d1 = touch(&P[1], 2 * tile + 1, h, wt[1]);     // home of half 1 in partition 1
        touch(&P[s], 2 * tile + (1 - s), h, wt[s]);           // copy of the other half on the reader's side
        if (kv) {
            double ds[2] = {d0, d1};
            for (int q = 0; q < 2; q++) { if (ds[q] < 0) { dram += h; cold += h; } else dram += curve(ds[q]) * h; }
        }
    }
    printf("%.1f %.1f\n", dram, cold);
    return 0;
}
