/* Memory workload with known allocations, for the memory profile's truth.
 * Waits for a line on stdin (the profiler is attached by then), then for
 * argv[1] milliseconds (default 3000) runs two threads:
 *  - "churner": churn -> alloc_and_free mallocs blocks of 32 to 4096
 *    bytes and frees each at once: allocated, never in use at the end;
 *  - "keeper": keep -> keep_some allocates blocks of 256 to 8192 bytes
 *    with malloc, calloc, realloc(NULL, n) and realloc of a small block,
 *    and keeps every other one for the process's life (the rest are
 *    freed at once);
 * then prints "done <churned bytes> <keeper's bytes> <kept bytes>
 * <kept blocks>", the bytes each asked for, and sleeps until killed,
 * holding what it kept.
 * Built as C++ (alloc_cxx), every block comes from operator new[] and
 * goes back with delete[]. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

#ifdef __cplusplus
#define NEW_BLOCK(size) (new char[size])
#define DELETE_BLOCK(p) (delete[] (p))
#else
#define NEW_BLOCK(size) ((char *)malloc(size))
#define DELETE_BLOCK(p) free(p)
#endif

#define MAX_KEPT (1 << 20)

static double run_ms;
static double start_ms;
static volatile uint64_t sink;
static char *volatile no_block = NULL;

static uint64_t churned;
static uint64_t keeper_bytes;
static uint64_t kept_bytes;
static uint64_t kept_blocks;
static char *kept[MAX_KEPT];

static int running(void) { return now_ms() - start_ms < run_ms; }

__attribute__((noinline)) void alloc_and_free(size_t size) {
    char *p = NEW_BLOCK(size);
    if (!p)
        abort();
    p[0] = 1;
    sink += (uint64_t)p[0];
    DELETE_BLOCK(p);
    churned += size;
}

static void *churn(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "churner");
    for (size_t i = 0; running(); i++)
        for (size_t size = 32; size <= 4096; size += 32)
            alloc_and_free(size + (i & 31));
    return NULL;
}

/* One block of `size` bytes, made four ways in turn in C; every other
 * one is kept. */
__attribute__((noinline)) void keep_some(size_t size, size_t i) {
    char *p;
#ifdef __cplusplus
    p = NEW_BLOCK(size);
#else
    switch (i % 4) {
    case 0:
        p = malloc(size);
        break;
    case 1:
        p = calloc(1, size);
        break;
    case 2:
        /* glibc tail-calls malloc from here: one allocation, not two.
         * (The volatile keeps gcc from making it a malloc call.) */
        p = realloc(no_block, size);
        break;
    default:
        /* Grown from a small block: the small one is freed by realloc. */
        p = malloc(16);
        keeper_bytes += 16;
        p = (char *)realloc(p, size);
        break;
    }
#endif
    if (!p)
        abort();
    memset(p, 1, 8);
    keeper_bytes += size;
    if (i % 2 == 0 && kept_blocks < MAX_KEPT) {
        kept[kept_blocks++] = p;
        kept_bytes += size;
    } else {
        DELETE_BLOCK(p);
    }
}

static void *keep(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "keeper");
    for (size_t i = 0; running() && kept_blocks < MAX_KEPT; i++)
        keep_some(256 + (i * 97) % 7937, i);
    return NULL;
}

int main(int argc, char **argv) {
    run_ms = argc > 1 ? atof(argv[1]) : 3000;
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    start_ms = now_ms();
    pthread_t churner, keeper;
    pthread_create(&churner, NULL, churn, NULL);
    pthread_create(&keeper, NULL, keep, NULL);
    pthread_join(churner, NULL);
    pthread_join(keeper, NULL);
    printf("done %llu %llu %llu %llu\n", (unsigned long long)churned,
           (unsigned long long)keeper_bytes, (unsigned long long)kept_bytes,
           (unsigned long long)kept_blocks);
    fflush(stdout);
    for (;;)
        pause();
}
