/* Memory workload that forks, for the memory profile's fork truth.
 * Waits for a line on stdin (the profiler is attached by then), then:
 *  - keep_some mallocs blocks of 256 to 8192 bytes and keeps them all
 *    (up to MAX_KEPT blocks, or argv[1] milliseconds, default 1500);
 *  - fork(). The parent frees the even-numbered blocks at once and prints
 *    "parent <pid> <bytes it still holds>". The child waits argv[2]
 *    milliseconds (default 500: the profiler probes it meanwhile), frees
 *    the odd-numbered ones, then child_keep mallocs and keeps blocks of
 *    its own (CHILD_KEPT of them) and prints
 *    "child <pid> <inherited bytes it still holds> <bytes of its own>".
 * Both then sleep until killed, holding what they hold (the child dies
 * with its parent). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

#include "workload.h"

#define MAX_KEPT 20000
#define CHILD_KEPT 5000

static char *kept[MAX_KEPT];
static size_t sizes[MAX_KEPT];
static size_t kept_blocks;
static char *mine[CHILD_KEPT];

__attribute__((noinline)) void keep_some(size_t size) {
    char *p = malloc(size);
    if (!p)
        abort();
    memset(p, 1, 8);
    kept[kept_blocks] = p;
    sizes[kept_blocks++] = size;
}

__attribute__((noinline)) char *child_keep(size_t size) {
    char *p = malloc(size);
    if (!p)
        abort();
    memset(p, 2, 8);
    return p;
}

/* Frees the blocks of parity `odd`; returns the bytes of the others. */
static unsigned long long free_half(int odd) {
    unsigned long long held = 0;
    for (size_t i = 0; i < kept_blocks; i++) {
        if ((int)(i % 2) == odd)
            free(kept[i]);
        else
            held += sizes[i];
    }
    return held;
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 1500;
    double child_wait_ms = argc > 2 ? atof(argv[2]) : 500;
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    double start = now_ms();
    for (size_t i = 0; kept_blocks < MAX_KEPT && now_ms() - start < run_ms; i++)
        keep_some(256 + (i * 97) % 7937);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        /* Killed with its parent (the test kills the parent). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            return 1;
        usleep((useconds_t)(child_wait_ms * 1000));
        unsigned long long inherited = free_half(1);
        unsigned long long own = 0;
        for (size_t i = 0; i < CHILD_KEPT; i++) {
            size_t size = 256 + (i * 89) % 7937;
            mine[i] = child_keep(size);
            own += size;
        }
        printf("child %d %llu %llu\n", (int)getpid(), inherited, own);
    } else {
        unsigned long long held = free_half(0);
        printf("parent %d %llu\n", (int)getpid(), held);
    }
    fflush(stdout);
    for (;;)
        pause();
}
