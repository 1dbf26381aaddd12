/* Context-switch load: two threads hand one byte back and forth over two
 * pipes, both pinned to one CPU, so every hand-off is a context switch
 * (two per round trip). Runs for argv[1] ms (default 10000) on CPU argv[2]
 * (default 0), flat out or, with argv[3] > 0, at about that many round
 * trips per second (spinning between batches, which switches nothing), and
 * prints `round_trips_per_second <n>` at the end. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "workload.h"

static int ping[2], pong[2];

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static int cpu;

static void *echo(void *arg) {
    (void)arg;
    pin(cpu);
    char byte;
    while (read(ping[0], &byte, 1) == 1 && byte == 'x')
        if (write(pong[1], &byte, 1) != 1)
            break;
    return NULL;
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 10000;
    cpu = argc > 2 ? atoi(argv[2]) : 0;
    double pace = argc > 3 ? atof(argv[3]) : 0;
    if (pipe(ping) || pipe(pong))
        return 1;
    pin(cpu);
    pthread_t thread;
    pthread_create(&thread, NULL, echo, NULL);
    double start = now_ms();
    long trips = 0;
    char byte = 'x';
    while (now_ms() - start < run_ms) {
        for (int i = 0; i < 1000; i++) {
            if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1)
                return 1;
        }
        trips += 1000;
        /* Paced: wait for the time these trips are due. */
        while (pace > 0 && now_ms() - start < trips * 1000.0 / pace) {
        }
    }
    double elapsed = (now_ms() - start) / 1000.0;
    byte = 'q';
    write(ping[1], &byte, 1);
    pthread_join(thread, NULL);
    printf("round_trips_per_second %.0f\n", trips / elapsed);
    return 0;
}
