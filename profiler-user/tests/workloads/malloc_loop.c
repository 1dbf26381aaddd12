/* The memory profile's benchmark load: waits for a line on stdin, then
 * mallocs argv[2] bytes (default 64), touches and frees them, in a loop,
 * for argv[1] milliseconds (default 5000), and prints "pairs <n> <ns>":
 * how many malloc/free pairs in how many nanoseconds. */
#include <stdio.h>
#include <stdlib.h>

#include "workload.h"

static volatile char sink;

__attribute__((noinline)) void malloc_free(size_t size) {
    char *p = malloc(size);
    if (!p)
        abort();
    p[0] = 1;
    sink = p[0];
    free(p);
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 64;
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    double start = now_ms(), now = start;
    unsigned long long pairs = 0;
    while (now - start < run_ms) {
        for (int i = 0; i < 1000; i++)
            malloc_free(size);
        pairs += 1000;
        now = now_ms();
    }
    printf("pairs %llu %.0f\n", pairs, (now - start) * 1e6);
    return 0;
}
