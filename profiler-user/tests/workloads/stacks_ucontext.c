/* Stack corpus: coroutines on malloc'd stacks (glibc makecontext and
 * swapcontext). main makes 2 coroutines, each with its own 64 KiB stack,
 * and resumes them in turn until the run time is over. A coroutine runs
 * coro_outer -> coro_middle -> coro_spin: coro_spin spins ~3 ms, then
 * coro_middle switches back to main (coro_yield, a swapcontext) and the
 * chain goes on where it stopped when main resumes it. Nearly all CPU time
 * is in coro_spin, on a coroutine stack whose outermost frame is glibc's
 * __start_context (it has no caller: its CFI ends the unwind), not _start.
 * When the run time is over the coroutines return from coro_outer and
 * uc_link brings each back to main. Prints "resumes R coro_ms C total_ms T"
 * at exit. Runs for argv[1] milliseconds (default 5000). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include "workload.h"

#define COROUTINES 2
#define CORO_STACK (64 * 1024)
#define SPIN_MS 3.0

static volatile uint64_t sink;
static volatile int stopping;
static ucontext_t main_ctx;
static ucontext_t coro_ctx[COROUTINES];
static double coro_ms;

__attribute__((noinline)) uint64_t coro_spin(uint64_t seed) {
    uint64_t acc = seed;
    double start = now_ms();
    do {
        CHURN(acc, 20000);
    } while (now_ms() - start < SPIN_MS);
    coro_ms += now_ms() - start;
    return acc;
}

__attribute__((noinline)) void coro_yield(int index) {
    swapcontext(&coro_ctx[index], &main_ctx);
}

__attribute__((noinline)) uint64_t coro_middle(int index, uint64_t seed) {
    uint64_t acc = coro_spin(seed) + 1;
    coro_yield(index);
    return acc;
}

__attribute__((noinline)) void coro_outer(int index) {
    uint64_t acc = (uint64_t)index + 1;
    while (!stopping) {
        acc = coro_middle(index, acc);
        sink = acc;
    }
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    for (int i = 0; i < COROUTINES; i++) {
        getcontext(&coro_ctx[i]);
        coro_ctx[i].uc_stack.ss_sp = malloc(CORO_STACK);
        coro_ctx[i].uc_stack.ss_size = CORO_STACK;
        coro_ctx[i].uc_link = &main_ctx;
        makecontext(&coro_ctx[i], (void (*)(void))coro_outer, 1, i);
    }
    double start = now_ms();
    long resumes = 0;
    while (now_ms() - start < run_ms) {
        for (int i = 0; i < COROUTINES; i++) {
            swapcontext(&main_ctx, &coro_ctx[i]);
            resumes++;
        }
    }
    /* Let each coroutine leave coro_outer; uc_link brings it back here. */
    stopping = 1;
    for (int i = 0; i < COROUTINES; i++) {
        swapcontext(&main_ctx, &coro_ctx[i]);
    }
    printf("resumes %ld coro_ms %.0f total_ms %.0f\n", resumes, coro_ms, now_ms() - start);
    return 0;
}
