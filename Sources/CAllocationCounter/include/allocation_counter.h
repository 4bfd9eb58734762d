#ifndef MESHTRACE_ALLOCATION_COUNTER_H
#define MESHTRACE_ALLOCATION_COUNTER_H

#include <stdint.h>

/// Starts or stops counting heap allocations made by the calling thread.
void meshtrace_count_allocations(int enabled);

/// Heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc,
/// memalign) the calling thread made while counting was on.
uint64_t meshtrace_allocations(void);

#endif
