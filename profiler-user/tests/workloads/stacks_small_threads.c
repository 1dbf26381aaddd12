/* Stack corpus: threads on small stacks. main starts 4 pthreads with
 * 16 KiB stacks (or PTHREAD_STACK_MIN if larger), named "small_N", each
 * running small_outer -> small_middle -> small_spin until the run time is
 * over, and joins them. The threads' outermost frame is clone3 (glibc
 * 2.34+; __clone before), through start_thread. Prints "stack_bytes S" at
 * exit. Runs for argv[1] milliseconds (default 5000). */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "workload.h"

#define THREADS 4
#define SMALL_STACK (16 * 1024)

static volatile uint64_t sink;
static double run_ms;
static double start_ms;

__attribute__((noinline)) uint64_t small_spin(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 200000);
    return acc;
}

__attribute__((noinline)) uint64_t small_middle(uint64_t seed) { return small_spin(seed) + 1; }

__attribute__((noinline)) void *small_outer(void *arg) {
    uint64_t acc = (uint64_t)(uintptr_t)arg;
    while (now_ms() - start_ms < run_ms) {
        acc = small_middle(acc);
        sink = acc;
    }
    return NULL;
}

int main(int argc, char **argv) {
    run_ms = argc > 1 ? atof(argv[1]) : 5000;
    size_t stack_bytes = SMALL_STACK;
    if ((size_t)PTHREAD_STACK_MIN > stack_bytes) {
        stack_bytes = PTHREAD_STACK_MIN;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (pthread_attr_setstacksize(&attr, stack_bytes) != 0) {
        fprintf(stderr, "pthread_attr_setstacksize %zu failed\n", stack_bytes);
        return 1;
    }
    start_ms = now_ms();
    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++) {
        if (pthread_create(&threads[i], &attr, small_outer, (void *)(i + 1)) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
        char name[16];
        snprintf(name, sizeof name, "small_%ld", i);
        pthread_setname_np(threads[i], name);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
    }
    printf("stack_bytes %zu\n", stack_bytes);
    return 0;
}
