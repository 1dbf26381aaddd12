/* Lock-contention workload with known waits, for the locks profile's truth:
 *  - two "contender" threads take one pthread mutex in turn, through
 *    contend_function -> take_mutex, hold it 1 ms (asleep) and let go; each
 *    measures how long it waited in pthread_mutex_lock;
 *  - two "mapper" threads mmap, touch and munmap anonymous memory in a loop
 *    (map_function): they contend for their process's mmap_lock, a kernel
 *    rw_semaphore;
 *  - a "waiter" thread waits on a condition variable nobody signals
 *    (cond_wait_function, 20 ms timeouts): a futex wait that is not lock
 *    contention.
 * Runs for argv[1] milliseconds (default 5000), then prints
 * "wait_ns W wall_ns T threads N": the contenders' total wait in the mutex,
 * the wall time they ran and how many they were. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "workload.h"

#define CONTENDERS 2
#define MAPPERS 2

static double run_ms;
static double start_ms;
static pthread_mutex_t the_mutex = PTHREAD_MUTEX_INITIALIZER;
static double waited_ms[CONTENDERS];

static int running(void) { return now_ms() - start_ms < run_ms; }

static void sleep_us(long us) {
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

__attribute__((noinline)) void take_mutex(void) { pthread_mutex_lock(&the_mutex); }

/* One turn: returns how long taking the mutex took, in ms. */
__attribute__((noinline)) double contend_function(void) {
    double before = now_ms();
    take_mutex();
    double waited = now_ms() - before;
    sleep_us(1000);
    pthread_mutex_unlock(&the_mutex);
    return waited;
}

static void *main_contender(void *arg) {
    long index = (long)arg;
    pthread_setname_np(pthread_self(), "contender");
    while (running()) {
        waited_ms[index] += contend_function();
        sleep_us(100);
    }
    return NULL;
}

__attribute__((noinline)) void map_function(void) {
    size_t size = 64 * 1024;
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    memset(p, 1, size);
    munmap(p, size);
}

__attribute__((noinline)) void cond_wait_function(void) {
    static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 20 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&mutex);
    pthread_cond_timedwait(&never, &mutex, &until);
    pthread_mutex_unlock(&mutex);
}

static void *main_waiter(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "waiter");
    while (running())
        cond_wait_function();
    return NULL;
}

static void *main_mapper(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "mapper");
    while (running())
        map_function();
    return NULL;
}

int main(int argc, char **argv) {
    run_ms = argc > 1 ? atof(argv[1]) : 5000;
    start_ms = now_ms();
    pthread_t contenders[CONTENDERS], mappers[MAPPERS], waiter;
    pthread_create(&waiter, NULL, main_waiter, NULL);
    for (long i = 0; i < CONTENDERS; i++)
        pthread_create(&contenders[i], NULL, main_contender, (void *)i);
    for (long i = 0; i < MAPPERS; i++)
        pthread_create(&mappers[i], NULL, main_mapper, NULL);
    for (int i = 0; i < CONTENDERS; i++)
        pthread_join(contenders[i], NULL);
    double wall = now_ms() - start_ms;
    for (int i = 0; i < MAPPERS; i++)
        pthread_join(mappers[i], NULL);
    pthread_join(waiter, NULL);
    double waited = 0;
    for (int i = 0; i < CONTENDERS; i++)
        waited += waited_ms[i];
    printf("wait_ns %.0f wall_ns %.0f threads %d\n", waited * 1e6, wall * 1e6, CONTENDERS);
    return 0;
}
