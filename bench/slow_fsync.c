/* A simulated network disk for bench/run.py: LD_PRELOAD this into the server processes and
 * every fsync/fdatasync first sleeps SLOW_FSYNC_MS milliseconds (default 2; 0 only counts),
 * then does the real call. Each call is counted in the 8-byte file named by
 * SLOW_FSYNC_COUNTER (if set), shared by every process of the tree through a MAP_SHARED
 * mapping and an atomic add, so the bench can report requests per fsync.
 *
 *   gcc -O2 -shared -fPIC -o slow_fsync.so bench/slow_fsync.c -ldl
 *   SLOW_FSYNC_MS=2 SLOW_FSYNC_COUNTER=/tmp/count LD_PRELOAD=$PWD/slow_fsync.so gunicorn ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static volatile uint64_t *counter;
static long delay_ns = 2000000L;

__attribute__((constructor)) static void setup(void)
{
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *ms = getenv("SLOW_FSYNC_MS");
    if (ms && *ms)
        delay_ns = (long)(atof(ms) * 1e6);
    const char *path = getenv("SLOW_FSYNC_COUNTER");
    if (path && *path) {
        int fd = open(path, O_RDWR);
        if (fd >= 0) {
            void *map = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (map != MAP_FAILED)
                counter = map;
            close(fd);
        }
    }
}

static void slow_down(void)
{
    if (counter)
        __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
    if (delay_ns > 0) {
        struct timespec wait = {delay_ns / 1000000000L, delay_ns % 1000000000L};
        while (nanosleep(&wait, &wait) != 0)
            ; /* interrupted by a signal: sleep the rest */
    }
}

int fsync(int fd)
{
    slow_down();
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    slow_down();
    return real_fdatasync(fd);
}
