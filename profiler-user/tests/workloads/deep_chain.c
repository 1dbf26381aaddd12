/* main -> descend x (N + 1) -> hot_loop: a hot function N + 2 calls deep
 * (N = argv[2], default 25). Runs for argv[1] milliseconds (default 5000). */
#include <stdint.h>
#include <stdlib.h>

#include "workload.h"

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t hot_loop(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 200000);
    return acc;
}

__attribute__((noinline)) uint64_t descend(int depth, uint64_t seed) {
    if (depth == 0) {
        return hot_loop(seed);
    }
    return descend(depth - 1, seed) + (uint64_t)depth;
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    int depth = argc > 2 ? atoi(argv[2]) : 25;
    double start = now_ms();
    uint64_t seed = 1;
    while (now_ms() - start < run_ms) {
        seed = descend(depth, seed);
        sink = seed;
    }
    return 0;
}
