/* A shared library with thousands of small functions (a large symbol
 * table, .eh_frame and debug info) and one hot loop, for the tenant that
 * truncates it (truncator.c). */
#include <stdint.h>

#define F(n)                                                                    \
    __attribute__((noinline)) uint64_t bulk_##n(uint64_t x) { return x * (n##ULL | 1) + (x >> 7); }
#define F10(n) F(n##0) F(n##1) F(n##2) F(n##3) F(n##4) F(n##5) F(n##6) F(n##7) F(n##8) F(n##9)
#define F100(n)                                                                 \
    F10(n##0) F10(n##1) F10(n##2) F10(n##3) F10(n##4) F10(n##5) F10(n##6) F10(n##7) F10(n##8) \
    F10(n##9)
#define F1000(n)                                                                \
    F100(n##0) F100(n##1) F100(n##2) F100(n##3) F100(n##4) F100(n##5) F100(n##6) F100(n##7)  \
    F100(n##8) F100(n##9)

F1000(1)
F1000(2)
F1000(3)
F1000(4)

__attribute__((noinline)) uint64_t bulk_burn(uint64_t x, uint64_t rounds) {
    for (uint64_t i = 0; i < rounds; i++) {
        x = bulk_1234(x) ^ bulk_4321(x + i);
    }
    return x;
}
