// Maps a file, reads one byte in every 256 KiB of it, and prints the process's
// resident memory: how much of a file the kernel makes resident for the pages a
// process touches. Second argument: an madvise(2) advice number to apply first
// (1 is MADV_RANDOM).
//   cc -O2 -o /tmp/touch_pages Benchmarks/rss-floor/touch_pages.c
//   cat FILE > /dev/null && /tmp/touch_pages FILE && /tmp/touch_pages FILE 1
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [ADVICE]\n", argv[0]);
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    size_t size = (size_t)lseek(fd, 0, SEEK_END);
    char *bytes = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (bytes == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (argc > 2 && madvise(bytes, size, atoi(argv[2])) != 0) perror("madvise");
    volatile char sum = 0;
    for (size_t offset = 0; offset < size; offset += 256 * 1024) sum += bytes[offset];
    FILE *status = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (status && fgets(line, sizeof line, status)) {
        if (strncmp(line, "Rss:", 4) == 0) fputs(line, stdout);
    }
    return 0;
}
