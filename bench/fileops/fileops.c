/*
 * fileops: what each file operation of the file-heavy job (bench section 4b) costs where it runs,
 * in CPU time per operation, so that the overlay's share is seen per operation, not only as one
 * ratio of the whole job.
 *
 *   fileops LIST ROUNDS
 *
 * LIST holds the job's files as absolute paths, each ended by a NUL (`find ... -print0`). For
 * each file: a path lookup (stat), open + close, and what cat does (open, fstat, read to the end,
 * close); for each folder the files lie in: opendir, readdir to the end, closedir. One warm-up
 * round, then ROUNDS rounds; each figure is the median round's CPU time of this process (user +
 * system, so that other load on the machine counts as little as possible) divided by the number
 * of files, resp. folders. Prints one line of `name=nanoseconds` pairs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { STAT, OPEN_CLOSE, CAT, READDIR, OPS };
static const char *const NAMES[OPS] = {"stat_ns", "open_close_ns", "cat_ns", "readdir_ns"};

static double cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Reads LIST into one buffer; returns the paths in it, and their number in *count. */
static char **read_list(const char *list, size_t *count) {
    FILE *f = fopen(list, "r");
    if (!f) {
        perror(list);
        exit(2);
    }
    size_t size = 0, cap = 1 << 20;
    char *text = malloc(cap);
    size_t got;
    while (text && (got = fread(text + size, 1, cap - size, f)) > 0) {
        size += got;
        if (size == cap)
            text = realloc(text, cap *= 2);
    }
    fclose(f);
    char **paths = malloc(sizeof(char *) * (size + 1));
    if (!text || !paths) {
        fprintf(stderr, "fileops: out of memory\n");
        exit(2);
    }
    *count = 0;
    for (size_t i = 0; i < size; i += strlen(text + i) + 1)
        paths[(*count)++] = text + i;
    return paths;
}

/* The folders the files lie in, each once (the list is in find's order: a folder's files are
 * together). */
static char **folders_of(char **paths, size_t count, size_t *folders) {
    char **dirs = malloc(sizeof(char *) * (count + 1));
    *folders = 0;
    for (size_t i = 0; i < count; i++) {
        char *dir = strdup(paths[i]);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir)
            *slash = '\0';
        if (*folders && strcmp(dirs[*folders - 1], dir) == 0)
            free(dir);
        else
            dirs[(*folders)++] = dir;
    }
    return dirs;
}

static void run_round(char **paths, size_t count, char **dirs, size_t folders, double spent[OPS]) {
    static char data[1 << 16];
    struct stat st;
    double t = cpu_ns();
    for (size_t i = 0; i < count; i++)
        stat(paths[i], &st);
    spent[STAT] = cpu_ns() - t;
    t = cpu_ns();
    for (size_t i = 0; i < count; i++) {
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            close(fd);
    }
    spent[OPEN_CLOSE] = cpu_ns() - t;
    t = cpu_ns();
    for (size_t i = 0; i < count; i++) {
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        fstat(fd, &st);
        while (read(fd, data, sizeof data) > 0) {
        }
        close(fd);
    }
    spent[CAT] = cpu_ns() - t;
    t = cpu_ns();
    for (size_t i = 0; i < folders; i++) {
        DIR *dir = opendir(dirs[i]);
        if (!dir)
            continue;
        while (readdir(dir)) {
        }
        closedir(dir);
    }
    spent[READDIR] = cpu_ns() - t;
}

int main(int argc, char **argv) {
    if (argc != 3 || atoi(argv[2]) < 1) {
        fprintf(stderr, "usage: fileops LIST ROUNDS\n");
        return 2;
    }
    size_t count, folders;
    char **paths = read_list(argv[1], &count);
    char **dirs = folders_of(paths, count, &folders);
    int rounds = atoi(argv[2]);
    double *spent = calloc((size_t)rounds * OPS, sizeof(double));
    double warm_up[OPS];
    run_round(paths, count, dirs, folders, warm_up);
    for (int r = 0; r < rounds; r++)
        run_round(paths, count, dirs, folders, spent + (size_t)r * OPS);
    printf("files=%zu folders=%zu", count, folders);
    for (int op = 0; op < OPS; op++) {
        double per_round[rounds];
        for (int r = 0; r < rounds; r++)
            per_round[r] = spent[(size_t)r * OPS + op] / (op == READDIR ? folders : count);
        qsort(per_round, rounds, sizeof(double), by_value);
        printf(" %s=%.0f", NAMES[op], per_round[rounds / 2]);
    }
    printf("\n");
    return 0;
}
