/* Names an unprivileged tenant picks to attack text outputs. The main
 * thread renames itself (prctl(PR_SET_NAME) needs no privilege) to a name
 * holding a newline and a color escape, then spends its time in a function
 * whose symbol holds an escape sequence: an asm label, quoted so the
 * assembler takes the `[`. Built without debug info, so the symbol table
 * names the function. Runs for argv[1] milliseconds (default 5000). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>

#include "workload.h"

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t hostile_spin(uint64_t seed) __asm__("\"evil\x1b[31m_fn\"");

uint64_t hostile_spin(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 200000);
    return acc;
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    if (prctl(PR_SET_NAME, "evil\n\x1b[31mred", 0, 0, 0) != 0) {
        perror("prctl(PR_SET_NAME)");
        return 1;
    }
    double start = now_ms();
    uint64_t seed = 1;
    while (now_ms() - start < run_ms) {
        seed = hostile_spin(seed);
        sink = seed;
    }
    return 0;
}
