#include "meshtrace_cache_hints.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

int meshtrace_cpu_has_prefetchw = 0;

/// Reads the CPU's features once, as the program (or the library) loads.
__attribute__((constructor)) static void meshtrace_read_cpu_features(void) {
#if defined(__x86_64__)
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid(0x80000001u, &eax, &ebx, &ecx, &edx)) {
        meshtrace_cpu_has_prefetchw = (ecx >> 8) & 1;
    }
#endif
}
