/* A library holding the OpenTelemetry thread-context pointer (OTEP 4947),
 * as an SDK's native part would: exported in .dynsym, STT_TLS, 8 bytes,
 * reached by TLS descriptors (-mtls-dialect=gnu2, the spec's
 * recommendation). otel_thread_ctx (built with -DOTEL_CTX_LINKED or
 * -DOTEL_CTX_DLOPEN) sets it through otel_ctx_attach. */
#include <stddef.h>

__attribute__((visibility("default"))) __thread void *otel_thread_ctx_v1;

/* Points the calling thread's context at `record` (pointer swap: the
 * record is complete before the pointer names it). */
void otel_ctx_attach(void *record) {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *(void *volatile *)&otel_thread_ctx_v1 = record;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}
