#ifndef MESHTRACE_CACHE_HINTS_H
#define MESHTRACE_CACHE_HINTS_H

/// Asks the CPU to bring the cache line at `address` into this core's cache, owned
/// for writing, without waiting for it. A hint: it never faults and may be ignored.
static inline void meshtrace_prefetch_for_write(const void *address) {
#if defined(__x86_64__)
    // PREFETCHW asks for the line in a state this core may write; x86-64 processors
    // without it execute it as a no-op. (Without -mprfchw, the compiler's builtin
    // would emit a prefetch for reading.)
    __asm__ volatile("prefetchw %0" : : "m"(*(const char *)address));
#else
    __builtin_prefetch(address, 1, 3);
#endif
}

#endif
