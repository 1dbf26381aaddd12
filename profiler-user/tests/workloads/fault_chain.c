/* Page-fault workload with known faults, for the page-fault profile's
 * truth:
 *  - thread "toucher": main_toucher -> touch_pages maps 16 MiB of fresh
 *    anonymous memory (no huge pages: one fault per 4 KiB page), writes
 *    one byte per page and unmaps it, in a loop. After each round it
 *    prints "faults <unix ns> <minor faults so far>", its own count from
 *    getrusage(RUSAGE_THREAD), so a test can take the faults of any time
 *    window from the kernel's accounting, not from the page arithmetic;
 *  - thread "spinner": spin_function computes without touching new
 *    memory: on the CPU all the time, with next to no page faults.
 * Runs for argv[1] milliseconds (default 5000); argv[2] "0" leaves the
 * spinner out (the benchmark's load). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include "workload.h"

#define ROUND_BYTES (16UL << 20)

static double run_ms;
static double start_ms;
static volatile uint64_t sink;

static int running(void) { return now_ms() - start_ms < run_ms; }

__attribute__((noinline)) void touch_pages(void) {
    char *p = mmap(NULL, ROUND_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        abort();
    madvise(p, ROUND_BYTES, MADV_NOHUGEPAGE);
    for (size_t at = 0; at < ROUND_BYTES; at += 4096)
        p[at] = 1;
    munmap(p, ROUND_BYTES);
}

static void *main_toucher(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "toucher");
    while (running()) {
        touch_pages();
        struct rusage usage;
        struct timespec now;
        getrusage(RUSAGE_THREAD, &usage);
        clock_gettime(CLOCK_REALTIME, &now);
        printf("faults %lld %ld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec,
               usage.ru_minflt);
    }
    return NULL;
}

__attribute__((noinline)) void spin_function(void) {
    uint64_t acc = sink;
    CHURN(acc, 100000);
    sink = acc;
}

static void *main_spinner(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "spinner");
    while (running())
        spin_function();
    return NULL;
}

int main(int argc, char **argv) {
    run_ms = argc > 1 ? atof(argv[1]) : 5000;
    start_ms = now_ms();
    int spin = argc > 2 ? atoi(argv[2]) : 1;
    pthread_t toucher, spinner;
    pthread_create(&toucher, NULL, main_toucher, NULL);
    if (spin)
        pthread_create(&spinner, NULL, main_spinner, NULL);
    pthread_join(toucher, NULL);
    if (spin)
        pthread_join(spinner, NULL);
    return 0;
}
