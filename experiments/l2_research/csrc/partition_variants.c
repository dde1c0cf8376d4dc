// Variants of the two-partition cache response (experiments/partition_variants.py): how a far-side
// read treats the copy on the reader's side. Same input as partition_replay.c (events in time
// order, int64 x 4: tile id, reader's L2 side 0/1, bytes, kind 1 = a counted K/V read, 0 = capacity
// only), plus a variant number:
//   0 refresh      (the model): a read touches both halves where they live and a copy of the far
//                  half on its side; DRAM per half: m(distance in its own partition)
//   1 copy-serves  a far-side read served by its side's copy (held with probability 1 - m(copy
//                  distance), drawn) does not touch the home half; DRAM only if both are gone
//   2 copy-on-fill every read touches the home halves; a far-side read leaves a copy on its side only
//                  when the home half is filled from DRAM (drawn with m) or it arrives within 1 MiB of
//                  the home partition's traffic after such a fill (a merge into the fill); hits do
//                  not refresh copies
//   3 half-refresh as 2, and a far-side hit refreshes the copy with probability 0.5
// Usage: partition_variants EVENTS N_TILES VARIANT x0 y0 x1 y1 ... (curve: bytes, miss fraction);
// prints the expected DRAM bytes of the counted reads (draws: a fixed xorshift seed).
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
static double *xs, *ys; static int ncur;
static double curve(double d) { if (d <= xs[0]) return ys[0]; for (int i = 1; i < ncur; i++) if (d <= xs[i]) return ys[i-1] + (ys[i]-ys[i-1]) * (d - xs[i-1]) / (xs[i]-xs[i-1]); return ys[ncur-1]; }
typedef struct { double *t; int64_t n, cap; double tot, clock; int64_t *last; double *fill; } Part;
static void add(Part *p, int64_t i, double v) { for (i++; i <= p->cap; i += i & -i) p->t[i] += v; }
static double pre(Part *p, int64_t i) { double r = 0; for (; i > 0; i -= i & -i) r += p->t[i]; return r; }
static double dist(Part *p, int64_t key) { int64_t l = p->last[key]; return l < 0 ? -1 : p->tot - pre(p, l + 1); }
// touch key with weight w; returns its distance before the touch (-1: first touch)
static double touch(Part *p, int64_t key, double w, double *wt) {
    int64_t l = p->last[key]; double d = -1;
    if (l >= 0) { d = p->tot - pre(p, l + 1); add(p, l, -wt[l]); p->tot -= wt[l]; }
    int64_t i = p->n++; wt[i] = w; add(p, i, w); p->tot += w; p->last[key] = i; p->clock += w;
    return d;
}
static uint64_t rs = 88172645463325252ULL;
static double urand(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (rs >> 11) * (1.0 / 9007199254740992.0); }
static double miss(double d) { return d < 0 ? 1.0 : curve(d); }
int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: partition_variants EVENTS N_TILES VARIANT x0 y0 ...\n"); return 1; }
    FILE *f = fopen(argv[1], "rb"); int64_t ntile = atoll(argv[2]); int var = atoi(argv[3]);
    if (!f || var < 0 || var > 3) { fprintf(stderr, "bad events file or variant\n"); return 1; }
    ncur = (argc - 4) / 2; xs = malloc(ncur * sizeof(double)); ys = malloc(ncur * sizeof(double));
    for (int i = 0; i < ncur; i++) { xs[i] = atof(argv[4 + 2*i]); ys[i] = atof(argv[5 + 2*i]); }
    fseek(f, 0, SEEK_END); int64_t nev = ftell(f) / 32; fseek(f, 0, SEEK_SET);
    int64_t *ev = malloc(nev * 32); if (fread(ev, 32, nev, f) != (size_t)nev) return 2;
    const double W = 1024.0 * 1024.0, p_refresh = var == 3 ? 0.5 : 0.0;
    Part P[2]; double *wt[2];
    for (int q = 0; q < 2; q++) {
        P[q].cap = 2 * nev + 8; P[q].t = calloc(P[q].cap + 1, sizeof(double)); P[q].n = 0; P[q].tot = 0; P[q].clock = 0;
        P[q].last = malloc(2 * ntile * sizeof(int64_t)); P[q].fill = malloc(2 * ntile * sizeof(double));
        for (int64_t i = 0; i < 2 * ntile; i++) { P[q].last[i] = -1; P[q].fill[i] = -1e30; }
        wt[q] = malloc(P[q].cap * sizeof(double));
    }
    double dram = 0;
    for (int64_t e = 0; e < nev; e++) {
        int64_t tile = ev[4*e], s = ev[4*e+1]; double h = (double)ev[4*e+2] / 2; int kv = (int)ev[4*e+3];
        if (var == 0) {
            double d0 = touch(&P[0], 2 * tile, h, wt[0]), d1 = touch(&P[1], 2 * tile + 1, h, wt[1]);
            touch(&P[s], 2 * tile + (1 - s), h, wt[s]);
            if (kv) dram += (miss(d0) + miss(d1)) * h;
        } else if (var == 1) {
            int o = 1 - s;
            double dn = touch(&P[s], 2 * tile + s, h, wt[s]);
            double mc = miss(dist(&P[s], 2 * tile + o)), mf = 0;
            if (urand() < mc) mf = miss(touch(&P[o], 2 * tile + o, h, wt[o]));
            touch(&P[s], 2 * tile + o, h, wt[s]);
            if (kv) dram += (miss(dn) + mf) * h;
        } else {
            for (int q = 0; q < 2; q++) {
                int64_t key = 2 * tile + q;
                double m = miss(touch(&P[q], key, h, wt[q]));
                int filled = urand() < m;
                if (filled) P[q].fill[key] = P[q].clock;
                if (kv) dram += m * h;
                if (q != s && (filled || P[q].clock - P[q].fill[key] <= W || urand() < p_refresh))
                    touch(&P[s], key, h, wt[s]);
            }
        }
    }
    printf("%.1f\n", dram);
    return 0;
}
