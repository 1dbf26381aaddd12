/* A process publishing OpenTelemetry context the way the specs say, for
 * the thread-context reader's truth:
 *  - a process context (OTEP 4719): a memfd mapping named OTEL_CTX holding
 *    the 32-byte header and a protobuf ProcessContext whose attributes say
 *    threadlocal.schema_version = "tlsdesc_v1_dev" and
 *    threadlocal.attribute_key_map = ["http.route"], and whose resource
 *    says service.name = "otel-ctx-workload";
 *  - a thread context (OTEP 4947): the TLS pointer otel_thread_ctx_v1,
 *    exported in .dynsym. Thread "ctx_worker" spins in otel_ctx_hot with
 *    its record set to span A for the first half of the run and to span B
 *    for the second half (pointer swap), with http.route = /checkout
 *    (key 0). The main thread spins in no_ctx_hot and never sets the
 *    pointer: its samples carry no context.
 *
 * Usage: otel_thread_ctx MS [TRACE_HEX_A SPAN_HEX_A TRACE_HEX_B SPAN_HEX_B]
 * (32 and 16 hex digits, W3C order; fixed ids when omitted). Prints, one
 * line each, flushed: `worker_tid <tid>` once span A is set, and
 * `switched <tid>` once span B is.
 *
 * Build (what the recipe must pass; -O2 -g and frame pointers as usual):
 *   gcc -O2 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls \
 *       -mtls-dialect=gnu2 -Wl,--export-dynamic-symbol=otel_thread_ctx_v1 \
 *       -o otel_thread_ctx otel_thread_ctx.c
 * (--export-dynamic-symbol needs binutils 2.35+; -rdynamic would do too,
 * exporting everything.) Access model this produces, checked with gcc 12.2
 * and binutils 2.40 for a PIE (the default) and for -no-pie: the variable
 * is defined in the executable, so the compiler and linker make every
 * access local-exec (`mov %rax,%fs:0xfffffffffffffff8`, no GOT slot, no
 * descriptor) and emit no dynamic relocation for it: `readelf -r` lists
 * no TLSDESC, TPOFF64 or DTPMOD64. `readelf --dyn-syms` shows
 *   TLS GLOBAL DEFAULT <.tbss> otel_thread_ctx_v1, size 8, value 0
 * and the PT_TLS segment (.tbss only) has MemSiz 8, Align 8, so the reader
 * computes tp_offset = 0 - roundup(8, 8) = -8: the pointer is at %fs:-8.
 * -mtls-dialect=gnu2 only matters for a shared library (TLSDESC).
 *
 * Built with -DOTEL_CTX_LINKED (linked against libotelctx.so) or
 * -DOTEL_CTX_DLOPEN (which dlopens it from its own directory), the
 * variable lives in that library instead, reached by TLS descriptors:
 * static TLS for a library loaded at start-up, and, for a dlopened one
 * run with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=0, dynamic TLS
 * through the thread's DTV. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#endif
#ifndef PR_SET_VMA_ANON_NAME
#define PR_SET_VMA_ANON_NAME 0
#endif

#if defined(OTEL_CTX_LINKED) || defined(OTEL_CTX_DLOPEN)
/* The pointer is libotelctx.so's; it sets it for the calling thread. */
static void (*lib_attach)(void *record);
#ifdef OTEL_CTX_LINKED
void otel_ctx_attach(void *record);
#endif
#else
/* The thread-context pointer (OTEP 4947): in .dynsym, STT_TLS, 8 bytes. */
__attribute__((visibility("default"))) __thread void *otel_thread_ctx_v1;
#endif

/* The thread-local context record: byte-packed, host endian; the natural
 * layout has no padding before attrs_data (checked below). */
struct otel_thread_ctx_record {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t valid;
    uint8_t trace_flags;
    uint16_t attrs_data_size;
    uint8_t attrs_data[612];
} __attribute__((aligned(8)));

_Static_assert(offsetof(struct otel_thread_ctx_record, span_id) == 16, "span_id at 16");
_Static_assert(offsetof(struct otel_thread_ctx_record, valid) == 24, "valid at 24");
_Static_assert(offsetof(struct otel_thread_ctx_record, trace_flags) == 25, "flags at 25");
_Static_assert(offsetof(struct otel_thread_ctx_record, attrs_data_size) == 26, "size at 26");
_Static_assert(offsetof(struct otel_thread_ctx_record, attrs_data) == 28, "attrs at 28");

/* The process-context header (OTEP 4719): 32 bytes, host endian. */
struct otel_process_ctx_header {
    char signature[8];
    uint32_t version;
    uint32_t payload_size;
    uint64_t monotonic_published_at_ns;
    uint64_t payload;
};

_Static_assert(sizeof(struct otel_process_ctx_header) == 32, "32-byte header");

/* A protobuf message being written: just enough of the wire format for
 * strings and nested messages (length-delimited fields). */
struct pb {
    uint8_t data[512];
    size_t len;
};

static void pb_raw(struct pb *b, const void *bytes, size_t n) {
    if (n > sizeof b->data - b->len) {
        fprintf(stderr, "protobuf buffer too small\n");
        exit(1);
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void pb_varint(struct pb *b, uint64_t v) {
    uint8_t byte;
    do {
        byte = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            byte |= 0x80;
        pb_raw(b, &byte, 1);
    } while (v);
}

/* Field `field`, wire type 2 (length-delimited), holding `n` bytes. */
static void pb_bytes(struct pb *b, unsigned field, const void *bytes, size_t n) {
    pb_varint(b, (uint64_t)field << 3 | 2);
    pb_varint(b, n);
    pb_raw(b, bytes, n);
}

static void pb_string(struct pb *b, unsigned field, const char *s) {
    pb_bytes(b, field, s, strlen(s));
}

static void pb_message(struct pb *b, unsigned field, const struct pb *m) {
    pb_bytes(b, field, m->data, m->len);
}

/* AnyValue { string_value = 1 }. */
static struct pb any_string(const char *s) {
    struct pb any = {0};
    pb_string(&any, 1, s);
    return any;
}

/* KeyValue { key = 1; value = 2 }. */
static struct pb key_value(const char *key, const struct pb *value) {
    struct pb kv = {0};
    pb_string(&kv, 1, key);
    pb_message(&kv, 2, value);
    return kv;
}

/* ProcessContext { Resource resource = 1; repeated KeyValue attributes = 2 }. */
static struct pb process_context_payload(void) {
    struct pb service = any_string("otel-ctx-workload");
    struct pb service_kv = key_value("service.name", &service);
    struct pb resource = {0};
    pb_message(&resource, 1, &service_kv); /* Resource.attributes */

    struct pb schema = any_string("tlsdesc_v1_dev");
    struct pb schema_kv = key_value("threadlocal.schema_version", &schema);

    struct pb route = any_string("http.route");
    struct pb array = {0};
    pb_message(&array, 1, &route); /* ArrayValue.values */
    struct pb key_map = {0};
    pb_message(&key_map, 5, &array); /* AnyValue.array_value */
    struct pb key_map_kv = key_value("threadlocal.attribute_key_map", &key_map);

    struct pb ctx = {0};
    pb_message(&ctx, 1, &resource);
    pb_message(&ctx, 2, &schema_kv);
    pb_message(&ctx, 2, &key_map_kv);
    return ctx;
}

static uint64_t boottime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Publishes the process context; kept mapped for the process's life. */
static void publish_process_context(void) {
    struct pb payload = process_context_payload();
    size_t size = (size_t)sysconf(_SC_PAGESIZE);
    if (sizeof(struct otel_process_ctx_header) + payload.len > size) {
        fprintf(stderr, "process context larger than a page\n");
        exit(1);
    }
    void *addr = MAP_FAILED;
    int fd = memfd_create("OTEL_CTX", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd < 0) /* Kernels before 6.3 reject MFD_NOEXEC_SEAL. */
        fd = memfd_create("OTEL_CTX", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd >= 0) {
        if (ftruncate(fd, (off_t)size) == 0)
            addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        close(fd);
    }
    if (addr == MAP_FAILED)
        addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (addr == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    madvise(addr, size, MADV_DONTFORK);

    struct otel_process_ctx_header *header = addr;
    uint8_t *payload_at = (uint8_t *)addr + sizeof *header;
    memcpy(payload_at, payload.data, payload.len);
    memcpy(header->signature, "OTEL_CTX", 8);
    header->version = 2;
    header->payload_size = (uint32_t)payload.len;
    header->payload = (uint64_t)(uintptr_t)payload_at;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    /* Written last: a reader seeing it non-zero sees the rest. */
    uint64_t published = boottime_ns();
    __atomic_store_n(&header->monotonic_published_at_ns, published ? published : 1,
                     __ATOMIC_SEQ_CST);
    /* Names an anonymous mapping; a memfd mapping is named already and the
     * kernel refuses (EINVAL), as do kernels before 5.17: ignored. */
    (void)prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)addr, size,
                (unsigned long)"OTEL_CTX");
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* `hex` (exactly 2 * n digits) into `out[n]`; 0 on success. */
static int parse_hex(const char *hex, uint8_t *out, size_t n) {
    if (strlen(hex) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* Fills `record` as a valid record for `trace`/`span`, sampled, with
 * http.route (key 0 of the key map) = /checkout; 0 on success. */
static int build_record(struct otel_thread_ctx_record *record, const char *trace,
                        const char *span) {
    memset(record, 0, sizeof *record);
    if (parse_hex(trace, record->trace_id, sizeof record->trace_id) ||
        parse_hex(span, record->span_id, sizeof record->span_id))
        return -1;
    static const char route[] = "/checkout";
    record->attrs_data[0] = 0;                         /* key: http.route */
    record->attrs_data[1] = (uint8_t)(sizeof route - 1); /* len */
    memcpy(record->attrs_data + 2, route, sizeof route - 1);
    record->attrs_data_size = (uint16_t)(2 + sizeof route - 1);
    record->trace_flags = 1; /* sampled */
    record->valid = 1;
    return 0;
}

/* Pointer swap: the record is complete before the pointer names it. */
static void attach(struct otel_thread_ctx_record *record) {
#if defined(OTEL_CTX_LINKED) || defined(OTEL_CTX_DLOPEN)
    lib_attach(record);
#else
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *(void *volatile *)&otel_thread_ctx_v1 = record;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
#endif
}

static volatile uint64_t sink;
static double run_ms, start_ms;
static struct otel_thread_ctx_record span_a, span_b;

__attribute__((noinline)) uint64_t otel_ctx_hot(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 200000);
    return acc;
}

__attribute__((noinline)) uint64_t no_ctx_hot(uint64_t seed) {
    uint64_t acc = seed;
    CHURN(acc, 200000);
    return acc;
}

static void *worker(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "ctx_worker");
    int tid = (int)syscall(SYS_gettid);
    attach(&span_a);
    printf("worker_tid %d\n", tid);
    fflush(stdout);
    uint64_t seed = 1;
    while (now_ms() - start_ms < run_ms / 2)
        sink = seed = otel_ctx_hot(seed);
    attach(&span_b);
    printf("switched %d\n", tid);
    fflush(stdout);
    while (now_ms() - start_ms < run_ms)
        sink = seed = otel_ctx_hot(seed);
    attach(NULL);
    return NULL;
}

int main(int argc, char **argv) {
    run_ms = argc > 1 ? atof(argv[1]) : 5000;
    const char *trace_a = argc > 5 ? argv[2] : "0af7651916cd43dd8448eb211c80319c";
    const char *span_a_hex = argc > 5 ? argv[3] : "b7ad6b7169203331";
    const char *trace_b = argc > 5 ? argv[4] : "4bf92f3577b34da6a3ce929d0e0e4736";
    const char *span_b_hex = argc > 5 ? argv[5] : "00f067aa0ba902b7";
    if ((argc > 2 && argc < 6) || build_record(&span_a, trace_a, span_a_hex) ||
        build_record(&span_b, trace_b, span_b_hex)) {
        fprintf(stderr, "usage: otel_thread_ctx MS [TRACE_HEX_A SPAN_HEX_A TRACE_HEX_B "
                        "SPAN_HEX_B] (32 and 16 hex digits)\n");
        return 2;
    }
#ifdef OTEL_CTX_LINKED
    lib_attach = otel_ctx_attach;
#endif
#ifdef OTEL_CTX_DLOPEN
    char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
    if (n <= 0)
        return 1;
    path[n] = 0;
    strcpy(strrchr(path, '/') + 1, "libotelctx.so");
    void *library = dlopen(path, RTLD_NOW);
    if (!library) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    *(void **)&lib_attach = dlsym(library, "otel_ctx_attach");
    if (!lib_attach)
        return 1;
#endif
    publish_process_context();
    start_ms = now_ms();
    pthread_t thread;
    if (pthread_create(&thread, NULL, worker, NULL) != 0)
        return 1;
    uint64_t seed = 1;
    while (now_ms() - start_ms < run_ms)
        sink = seed = no_ctx_hot(seed);
    pthread_join(thread, NULL);
    return 0;
}
