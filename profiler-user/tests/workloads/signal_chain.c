/* Hot code inside a signal handler: a CPU-time timer interrupts
 * main -> spin_outer, and the handler runs on_signal -> in_handler ->
 * hot_loop. Unwinding must cross the signal frame (glibc's __restore_rt)
 * back into spin_outer and main. spin_outer reads the clock once per
 * 100,000 steps, so that the signal lands in spin_outer itself, not in
 * clock_gettime (about 1 in 2,000 signals still does). The timer fires
 * every 10 ms of CPU time and the handler runs ~4 ms: were it longer than
 * the period, the next signal would be pending at the handler's return
 * and be delivered at once on the same interrupted context, so one
 * signal that landed in now_ms would be counted many times over (it was
 * 1 ms: up to 7 % of the handler's samples were over now_ms). Runs for
 * argv[1] milliseconds (default 5000). */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "workload.h"

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t hot_loop(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 2000000);
    return acc;
}

__attribute__((noinline)) uint64_t in_handler(uint64_t seed) { return hot_loop(seed) + 1; }

__attribute__((noinline)) void on_signal(int sig) { sink = in_handler(sink + (uint64_t)sig); }

__attribute__((noinline)) void spin_outer(double run_ms) {
    double start = now_ms();
    uint64_t x = 1;
    while (now_ms() - start < run_ms) {
        for (int i = 0; i < 100000; i++) {
            x = x * 6364136223846793005ULL + 1;
        }
        sink ^= x;
    }
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGPROF, &action, NULL);
    struct itimerval timer = {{0, 10000}, {0, 10000}};
    setitimer(ITIMER_PROF, &timer, NULL);
    spin_outer(run_ms);
    return 0;
}
