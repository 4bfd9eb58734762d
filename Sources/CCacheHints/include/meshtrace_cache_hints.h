#ifndef MESHTRACE_CACHE_HINTS_H
#define MESHTRACE_CACHE_HINTS_H

/// Nonzero when this CPU reports PREFETCHW (CPUID PRFCHW); set before main runs.
extern int meshtrace_cpu_has_prefetchw;

/// Asks the CPU to bring the cache line at `address` into this core's cache, owned
/// for writing, without waiting for it. A hint: it never faults and may be ignored.
static inline void meshtrace_prefetch_for_write(const void *address) {
#if defined(__x86_64__)
    // PREFETCHW asks for the line in a state this core may write. Where the CPU does
    // not report it, a prefetch for reading (part of every x86-64) brings the line
    // closer at least. The compiler's builtin emits only the latter without -mprfchw.
    if (meshtrace_cpu_has_prefetchw) {
        __asm__ volatile("prefetchw %0" : : "m"(*(const char *)address));
    } else {
        __builtin_prefetch(address, 0, 3);
    }
#else
    __builtin_prefetch(address, 1, 3);
#endif
}

/// Asks the CPU to bring the cache line at `address` into this core's cache for
/// reading, without waiting for it. A hint: it never faults and may be ignored.
static inline void meshtrace_prefetch_for_read(const void *address) {
    __builtin_prefetch(address, 0, 3);
}

#endif
