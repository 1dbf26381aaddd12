/* Stack corpus: a signal handler on an alternate signal stack. main
 * installs a 64 KiB sigaltstack and a SIGALRM handler with SA_ONSTACK,
 * and a 2 ms wall-clock interval timer (setitimer ITIMER_REAL: an hrtimer,
 * not quantised to the scheduler tick as CPU-time timers are). The
 * handler runs alt_handler -> alt_middle -> alt_spin on the alternate
 * stack; the interrupted code is main -> alt_base_outer -> alt_base_spin
 * on the thread's own stack. alt_spin spins until the handler has had
 * 70 % of the thread's CPU time (CLOCK_THREAD_CPUTIME_ID; at least ~0.2 ms,
 * at most 10 ms a call): ~1.4 ms a signal when the thread has a CPU to
 * itself, and still 70 % when it has to share one (a wall-clock spin would
 * take more and more of the CPU as the machine gets busier). Unwinding
 * alt_spin must go through the signal frame (glibc's __restore_rt) from
 * the alternate stack back to the thread's stack. alt_spin reads its clock
 * (a system call, ~0.4 us) once per ~0.2 ms of work and alt_base_spin its
 * own (the vDSO) once per ~40 us, so that few samples land in
 * clock_gettime.
 * One thread only, so that the process-wide SIGALRM always lands on it.
 * Prints "signals N off_altstack M handler_cpu_ms H cpu_ms T" at exit
 * (M must be 0). Runs for argv[1] milliseconds (default 5000). */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "workload.h"

#define ALT_STACK (64 * 1024)
#define PERIOD_US 2000
#define HANDLER_SHARE 0.7
#define HANDLER_MAX_MS 10.0

static volatile uint64_t sink;
static char *alt_stack;
static volatile long signals;
static volatile long off_altstack;
static volatile double handler_cpu_ms;

static double thread_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

__attribute__((noinline)) uint64_t alt_spin(uint64_t seed) {
    uint64_t acc = seed;
    double start = thread_cpu_ms();
    /* The CPU time spent outside the handler so far. */
    double base_ms = start - handler_cpu_ms;
    double target_ms = base_ms * HANDLER_SHARE / (1 - HANDLER_SHARE);
    double now;
    do {
        CHURN(acc, 100000);
        now = thread_cpu_ms();
    } while (handler_cpu_ms + (now - start) < target_ms && now - start < HANDLER_MAX_MS);
    handler_cpu_ms += now - start;
    return acc;
}

__attribute__((noinline)) uint64_t alt_middle(uint64_t seed) {
    /* Check that the handler does run on the alternate stack. */
    char here;
    if (&here < alt_stack || &here >= alt_stack + ALT_STACK) {
        off_altstack++;
    }
    return alt_spin(seed) + 1;
}

__attribute__((noinline)) void alt_handler(int sig) {
    signals++;
    sink = alt_middle(sink + (uint64_t)sig);
}

__attribute__((noinline)) uint64_t alt_base_spin(uint64_t seed, double run_ms) {
    uint64_t acc = seed;
    double start = now_ms();
    do {
        CHURN(acc, 20000);
    } while (now_ms() - start < run_ms);
    return acc;
}

__attribute__((noinline)) void alt_base_outer(double run_ms) {
    sink ^= alt_base_spin(1, run_ms);
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    alt_stack = malloc(ALT_STACK);
    stack_t ss = {.ss_sp = alt_stack, .ss_size = ALT_STACK, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        perror("sigaltstack");
        return 1;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = alt_handler;
    action.sa_flags = SA_ONSTACK | SA_RESTART;
    sigaction(SIGALRM, &action, NULL);
    struct itimerval timer = {{0, PERIOD_US}, {0, PERIOD_US}};
    setitimer(ITIMER_REAL, &timer, NULL);
    alt_base_outer(run_ms);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("signals %ld off_altstack %ld handler_cpu_ms %.0f cpu_ms %.0f\n", signals, off_altstack,
           handler_cpu_ms, thread_cpu_ms());
    return 0;
}
