/* CPU-bound workload: main -> level1 -> level2 -> hot_loop -> mix.
 * Runs for argv[1] milliseconds (default 5000). Built with frame pointers. */
#include <stdint.h>
#include <stdlib.h>

#include "workload.h"

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

__attribute__((noinline)) uint64_t hot_loop(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 200000);
    return mix(acc);
}

__attribute__((noinline)) uint64_t level2(uint64_t seed) { return hot_loop(seed) + 1; }
__attribute__((noinline)) uint64_t level1(uint64_t seed) { return level2(seed) + 1; }

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    double start = now_ms();
    uint64_t seed = 1;
    while (now_ms() - start < run_ms) {
        seed = level1(seed);
        sink = seed;
    }
    return 0;
}
