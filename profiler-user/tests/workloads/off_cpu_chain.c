/* Off-CPU workload with known waits, for the off-CPU profile's truth:
 *  - thread "sleeper": main_sleeper -> sleepy_function -> nanosleep(10 ms),
 *    in a loop: it is off the CPU, sleeping, nearly all of its wall time;
 *  - thread "piper": pipe_reader_function blocks in read() on a pipe that
 *    the main thread writes one byte to every 50 ms (wait class `pipe`).
 * Runs for argv[1] milliseconds (default 5000). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static double run_ms;
static double start_ms;
static int pipe_fds[2];

static int running(void) { return now_ms() - start_ms < run_ms; }

__attribute__((noinline)) void sleepy_function(void) {
    struct timespec ten_ms = {0, 10 * 1000 * 1000};
    nanosleep(&ten_ms, NULL);
}

static void *main_sleeper(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "sleeper");
    while (running())
        sleepy_function();
    return NULL;
}

__attribute__((noinline)) long pipe_reader_function(void) {
    char byte;
    return read(pipe_fds[0], &byte, 1);
}

static void *main_piper(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "piper");
    while (pipe_reader_function() > 0) {
    }
    return NULL;
}

int main(int argc, char **argv) {
    run_ms = argc > 1 ? atof(argv[1]) : 5000;
    start_ms = now_ms();
    if (pipe(pipe_fds) != 0)
        return 1;
    pthread_t sleeper, piper;
    pthread_create(&sleeper, NULL, main_sleeper, NULL);
    pthread_create(&piper, NULL, main_piper, NULL);
    struct timespec fifty_ms = {0, 50 * 1000 * 1000};
    while (running()) {
        nanosleep(&fifty_ms, NULL);
        if (write(pipe_fds[1], "x", 1) != 1)
            break;
    }
    close(pipe_fds[1]);
    pthread_join(sleeper, NULL);
    pthread_join(piper, NULL);
    return 0;
}
