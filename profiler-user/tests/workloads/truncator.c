/* A hostile tenant: burns CPU in its own shared library (libbulk.so, next
 * to the program) for the first half of argv[1] milliseconds, then, for
 * the second half, truncates the library's file to nothing and writes it
 * back, over and over, while it stays mapped. A profiler that reads the
 * file through a mapping of its own is killed by SIGBUS when a page it
 * reads is cut off; hostprof must go on. argv[2] is the library's path. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

uint64_t bulk_burn(uint64_t x, uint64_t rounds);

static volatile uint64_t sink;

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 8000;
    const char *library = argc > 2 ? argv[2] : "libbulk.so";
    int fd = open(library, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(library);
        return 1;
    }
    char *content = malloc(st.st_size);
    if (!content || pread(fd, content, st.st_size, 0) != st.st_size) {
        perror("reading the library");
        return 1;
    }
    /* Bind what the attack calls now: binding it lazily, in the attack,
     * would search libbulk.so's symbol table after it was cut off. */
    char line[64];
    if (ftruncate(fd, st.st_size) != 0 || pwrite(fd, content, st.st_size, 0) != st.st_size ||
        snprintf(line, sizeof line, "%d", 0) < 0 || write(1, line, 0) != 0) {
        perror("rewriting the library");
        return 1;
    }
    double start = now_ms();
    while (now_ms() - start < run_ms / 2) {
        sink = bulk_burn(sink + 1, 100000);
    }
    unsigned long rounds = 0;
    while (now_ms() - start < run_ms) {
        if (ftruncate(fd, 0) != 0 || pwrite(fd, content, st.st_size, 0) != st.st_size) {
            perror("rewriting the library");
            return 1;
        }
        rounds++;
    }
    /* Truncation also dropped our relocated copies of libbulk.so's pages
     * (the kernel unmaps private copies too): its destructors would jump
     * to unrelocated addresses, so leave without running them. */
    int n = snprintf(line, sizeof line, "%lu truncations\n", rounds);
    if (write(1, line, n) != n) {
        _exit(1);
    }
    _exit(0);
}
