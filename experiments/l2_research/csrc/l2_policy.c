// Replacement policies for the two L2 partitions (experiments/l2_policy.py): a set-associative
// cache state, not a reuse-distance response. Same events as partition_replay.c (int64 x 4: tile
// id, reader's L2 side 0/1, bytes, kind 1 = a counted K/V read, 0 = capacity only). Each tile is
// cut into units of UNIT bytes; unit u of a tile lives in partition u % 2 (its home); a read
// touches every unit where it lives, and the units homed on the far side are also touched as
// copies in the reader's partition (the partitions model's accounting). DRAM = the counted bytes
// of home units that miss. Each partition: CAP_MIB of WAYS-way sets; a unit's set is its index
// (unit pairs of consecutive tiles spread evenly, as an L2 address hash spreads a buffer), with
// HASH = 1 a random hash of it (uneven: some sets get more of a buffer than others), or with
// HASH = 2 the index rotated by a random hash of index / sets (balanced, like an XOR set index:
// every aligned run of as many unit pairs as sets covers each set once; strides of the set
// count do not collide; iosim.l2model.set_index).
// Policies (argument POLICY):
//   0 LRU
//   2 NRU: one used bit per way, set on a fill or hit; the victim is the first way whose bit is
//     clear, clearing all bits of the set when none is
//   1 RRIP: 2-bit re-reference values; a miss inserts at INS (3 = distant; with probability
//     1/32 at 2 when INS = 3: bimodal); a hit sets the value to 0 unless it comes within MERGE
//     bytes of the partition's traffic after the unit's fill (a merge into the fill: no promotion);
//     the victim is the first way at 3, ageing all ways of the set until one is.
//   3 DRRIP (set dueling): RRIP as above, a miss inserting at 2 (SRRIP) in sets 0 mod 32, at 3
//     with 1/32 at 2 (BRRIP) in sets 1 mod 32, and in the other sets as the leaders that missed
//     less lately (a 10-bit counter: a miss in an SRRIP leader counts up, in a BRRIP one down)
//   4 tree pseudo-LRU (WAYS a power of two): a binary tree of bits per set points at the victim
//   5 NRU with the victim drawn at random among the ways whose bit is clear
//   6 random replacement
//   7 FIFO: LRU by fill time, hits change nothing
//   8 CLOCK: NRU's bits with a hand per set: from where it stopped, the hand clears the bits it
//     passes and takes the first clear way; it then points past it
// (an empty way is always taken first, the hand staying where it is)
// Usage: l2_policy EVENTS N_TILES POLICY CAP_MIB WAYS INS MERGE_BYTES [HASH]
// prints: DRAM bytes of the counted reads
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#define UNIT 4096
typedef struct { int *hand; uint32_t *plru; int psel; int64_t *tag; double *stamp; double *fill; uint8_t *rr; int64_t nset; int ways; double clock; } Part;
static uint64_t rs = 88172645463325252ULL;
static double urand(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (rs >> 11) * (1.0 / 9007199254740992.0); }
static uint64_t mix(uint64_t x) { x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33; return x; }
static int policy, ins, HASH; static double merge;
// tree PLRU: node bits (heap order, node 1 the root); bit = 1 means the victim is on the right
static void plru_touch(Part *p, int64_t s, int w) {
    uint32_t t = p->plru[s]; int node = 1, lo = 0, hi = p->ways;
    while (hi - lo > 1) { int mid = (lo + hi) / 2;
        if (w < mid) { t |= 1u << node; node = 2 * node; hi = mid; } else { t &= ~(1u << node); node = 2 * node + 1; lo = mid; } }
    p->plru[s] = t;
}
static int plru_victim(Part *p, int64_t s) {
    uint32_t t = p->plru[s]; int node = 1, lo = 0, hi = p->ways;
    while (hi - lo > 1) { int mid = (lo + hi) / 2;
        if (t >> node & 1) { node = 2 * node + 1; lo = mid; } else { node = 2 * node; hi = mid; } }
    return lo;
}
// access key in partition p; returns 1 on a miss
static int access_unit(Part *p, int64_t key) {
    uint64_t ix = (uint64_t)(key >> 2), ns = (uint64_t)p->nset;
    int64_t s = (int64_t)(HASH == 2 ? (ix % ns + mix(ix / ns)) % ns : (HASH ? mix(ix) : ix) % ns);
    int64_t b = s * p->ways;
    p->clock += UNIT;
    for (int w = 0; w < p->ways; w++) if (p->tag[b + w] == key) {
        if (policy == 0) p->stamp[b + w] = p->clock;
        else if (policy == 7) {}
        else if (policy == 2 || policy == 5 || policy == 8) p->rr[b + w] = 1;
        else if (policy == 4) plru_touch(p, s, w);
        else if (p->clock - p->fill[b + w] > merge) p->rr[b + w] = 0;
        return 0;
    }
    int v = -1;
    for (int w = 0; w < p->ways; w++) if (p->tag[b + w] < 0) { v = w; break; }
    if (v < 0) {
        if (policy == 0 || policy == 7) { v = 0; for (int w = 1; w < p->ways; w++) if (p->stamp[b + w] < p->stamp[b + v]) v = w; }
        else if (policy == 8) {  // CLOCK: from the set's hand, clear used bits until a clear way
            int h = p->hand[s];
            for (;;) { if (!p->rr[b + h]) { v = h; break; } p->rr[b + h] = 0; h = (h + 1) % p->ways; }
            p->hand[s] = (v + 1) % p->ways;
        }
        else if (policy == 2) {
            for (int w = 0; w < p->ways; w++) if (!p->rr[b + w]) { v = w; break; }
            if (v < 0) { for (int w = 0; w < p->ways; w++) p->rr[b + w] = 0; v = 0; }
        }
        else if (policy == 5) {  // NRU, a random way among those whose bit is clear
            int c = 0; for (int w = 0; w < p->ways; w++) c += !p->rr[b + w];
            if (!c) { for (int w = 0; w < p->ways; w++) p->rr[b + w] = 0; c = p->ways; }
            int k = (int)(urand() * c); for (int w = 0; w < p->ways; w++) if (!p->rr[b + w] && k-- == 0) { v = w; break; }
        }
        else if (policy == 4) v = plru_victim(p, s);
        else if (policy == 6) v = (int)(urand() * p->ways);
        else for (;;) {
            for (int w = 0; w < p->ways; w++) if (p->rr[b + w] >= 3) { v = w; break; }
            if (v >= 0) break;
            for (int w = 0; w < p->ways; w++) p->rr[b + w]++;
        }
    }
    p->tag[b + v] = key; p->stamp[b + v] = p->clock; p->fill[b + v] = p->clock;
    if (policy == 4) plru_touch(p, s, v);
    if (policy == 3) {  // DRRIP: sets 0 mod 32 lead for SRRIP, 1 mod 32 for BRRIP, the rest follow
        int lead = (int)(s % 32), brrip;
        if (lead == 0) { brrip = 0; if (p->psel < 1023) p->psel++; }
        else if (lead == 1) { brrip = 1; if (p->psel > 0) p->psel--; }
        else brrip = p->psel >= 512;
        p->rr[b + v] = brrip ? (urand() < 1.0 / 32 ? 2 : 3) : 2;
    } else
        p->rr[b + v] = (policy == 2 || policy == 5 || policy == 8) ? 1 : (ins == 3 && urand() < 1.0 / 32) ? 2 : ins;
    return 1;
}
int main(int argc, char **argv) {
    if (argc < 8) { fprintf(stderr, "usage: l2_policy EVENTS N_TILES POLICY CAP_MIB WAYS INS MERGE\n"); return 1; }
    FILE *f = fopen(argv[1], "rb");
    policy = atoi(argv[3]); double cap = atof(argv[4]) * 1048576.0; int ways = atoi(argv[5]);
    ins = atoi(argv[6]); merge = atof(argv[7]); HASH = argc > 8 ? atoi(argv[8]) : 0;
    if (!f) { fprintf(stderr, "bad events file\n"); return 1; }
    fseek(f, 0, SEEK_END); int64_t nev = ftell(f) / 32; fseek(f, 0, SEEK_SET);
    int64_t *ev = malloc(nev * 32); if (fread(ev, 32, nev, f) != (size_t)nev) return 2;
    Part P[2];
    for (int q = 0; q < 2; q++) {
        P[q].ways = ways; P[q].nset = (int64_t)(cap / UNIT / ways); if (P[q].nset < 1) P[q].nset = 1;
        int64_t n = P[q].nset * ways;
        P[q].tag = malloc(n * sizeof(int64_t)); P[q].stamp = calloc(n, sizeof(double));
        P[q].fill = calloc(n, sizeof(double)); P[q].rr = calloc(n, 1); P[q].plru = calloc(P[q].nset, 4); P[q].hand = calloc(P[q].nset, sizeof(int)); P[q].clock = 0; P[q].psel = 512;
        for (int64_t i = 0; i < n; i++) P[q].tag[i] = -1;
    }
    double dram = 0;
    for (int64_t e = 0; e < nev; e++) {
        int64_t tile = ev[4*e], s = ev[4*e+1], nb = ev[4*e+2]; int kv = (int)ev[4*e+3];
        int64_t nu = (nb + UNIT - 1) / UNIT; if (nu < 2) nu = 2;
        double ub = (double)nb / nu;
        for (int64_t u = 0; u < nu; u++) {
            int home = (int)(u & 1); int64_t key = (tile * nu + u) * 2;
            int m = access_unit(&P[home], key);
            if (home != s) access_unit(&P[s], key + 1);
            if (kv && m) dram += ub;
        }
    }
    printf("%.1f\n", dram);
    return 0;
}
