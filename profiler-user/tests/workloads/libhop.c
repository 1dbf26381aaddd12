/* A shared library built without frame pointers whose function calls back
 * into the program: unwinding must cross it in both directions. */
#include <stdint.h>

__attribute__((noinline)) uint64_t hop(uint64_t (*f)(uint64_t), uint64_t x) {
    uint64_t r = f(x);
    return r ^ (r >> 3);
}
