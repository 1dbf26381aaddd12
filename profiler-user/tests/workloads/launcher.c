/* A wrapper that works before it execs (a shell script, a gosu-style
 * launcher): burns CPU in launcher_spin for argv[1] milliseconds, then
 * execs argv[2] with the arguments after it. Built without PIE, like the
 * program it starts, so the two images' code shares addresses: a sample
 * of the first resolved against the second names the wrong function. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "workload.h"

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t launcher_spin(double run_ms) {
    uint64_t acc = 1;
    double start = now_ms();
    while (now_ms() - start < run_ms) {
        CHURN(acc, 100000);
    }
    return acc;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: launcher MS PROGRAM [ARG...]\n");
        return 2;
    }
    sink = launcher_spin(atof(argv[1]));
    execv(argv[2], argv + 2);
    perror("execv");
    return 1;
}
