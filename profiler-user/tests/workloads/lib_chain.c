/* main -> level1 -> hop (libhop.so, no frame pointers) -> level2 -> hot_loop.
 * Runs for argv[1] milliseconds (default 5000). */
#include <stdint.h>
#include <stdlib.h>

#include "workload.h"

uint64_t hop(uint64_t (*f)(uint64_t), uint64_t x);

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t hot_loop(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 200000);
    return acc;
}

__attribute__((noinline)) uint64_t level2(uint64_t seed) { return hot_loop(seed) + 1; }
__attribute__((noinline)) uint64_t level1(uint64_t seed) { return hop(level2, seed) + 1; }

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
