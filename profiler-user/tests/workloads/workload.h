/* What the C test workloads share: a monotonic clock in milliseconds and
 * the arithmetic their hot functions spin on (a macro, not an inline
 * function: debug info would show an inlined frame above the hot one). */
#ifndef WORKLOAD_H
#define WORKLOAD_H

#include <stdint.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* `rounds` rounds of multiply, xor and rotate on the uint64_t `acc`. */
#define CHURN(acc, rounds)                                                   \
    for (int i_ = 0; i_ < (rounds); i_++) {                                 \
        (acc) += ((acc) * 2862933555777941757ULL + 3037000493ULL) ^ (uint64_t)i_; \
        (acc) = ((acc) << 7) | ((acc) >> 57);                                \
    }

#endif
