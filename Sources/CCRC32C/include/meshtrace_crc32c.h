#ifndef MESHTRACE_CRC32C_H
#define MESHTRACE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/// Nonzero when this CPU has a CRC-32C instruction that
/// `meshtrace_crc32c_update` can use.
int meshtrace_crc32c_hardware_available(void);

/// Feeds `count` bytes into a running CRC-32C register `crc` (reflected, with no
/// pre- or post-inversion: the caller inverts) using the CPU's CRC-32C
/// instruction. Only call it when `meshtrace_crc32c_hardware_available` is nonzero.
uint32_t meshtrace_crc32c_update(uint32_t crc, const void *bytes, size_t count);

#endif
