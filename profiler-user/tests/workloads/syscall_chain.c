/* Syscall-heavy workload: main -> syscall_loop -> raw_getppid, issuing the
 * syscall itself (no libc wrapper, which has no frame pointer) so the whole
 * user chain stays visible under the kernel frames. */
#include <stdlib.h>

#include "workload.h"

static volatile long last;

__attribute__((noinline)) void note(long value) { last = value; }

/* Not a leaf (it calls note), so gcc gives it a frame even at -O2: a
 * frameless leaf would hide its caller from frame-pointer unwinding. */
__attribute__((noinline)) long raw_getppid(void) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(110L) : "rcx", "r11", "memory");
    note(ret);
    return ret;
}

__attribute__((noinline)) long syscall_loop(long n) {
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc += raw_getppid();
    return acc;
}

int main(int argc, char **argv) {
    double run_ms = argc > 1 ? atof(argv[1]) : 5000;
    double start = now_ms();
    volatile long sink = 0;
    while (now_ms() - start < run_ms)
        sink += syscall_loop(10000);
    return (int)(sink & 0);
}
