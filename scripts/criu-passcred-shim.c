/*
 * Preloaded into criu by scripts/install-criu (the wrapper runs criu's loader with --preload).
 *
 * CRIU up to 4.2.1 reads SO_PASSCRED and SO_PASSSEC from every socket it saves. Linux 6.16 and
 * later answer EOPNOTSUPP for sockets other than unix, netlink and bluetooth ones ("net:
 * Restrict SO_PASS{CRED,PIDFD,SEC} to AF_{UNIX,NETLINK,BLUETOOTH}"), and CRIU then refuses to
 * save any TCP or UDP socket ("Can't get 1:16 opt"; CRIU issues #2705, #2718). On those kernels
 * the options cannot be set on such a socket either, so they are off: this answers "off", which
 * is what CRIU's own fix does. CRIU restores the options only when they were on. Every other
 * call, and every other failure, is the kernel's own.
 *
 * It also stands in for one prlimit(2) failure where CAP_SYS_RESOURCE is withheld, and caps
 * the pipe sizes CRIU asks for at what such a process may have (both below).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int getsockopt(int fd, int level, int name, void *value, socklen_t *length)
{
	long ret = syscall(SYS_getsockopt, fd, level, name, value, length);

	if (ret < 0 && errno == EOPNOTSUPP && level == SOL_SOCKET &&
	    (name == SO_PASSCRED || name == SO_PASSSEC) && value != NULL && length != NULL &&
	    *length >= sizeof(int)) {
		memset(value, 0, sizeof(int));
		*length = sizeof(int);
		return 0;
	}
	return (int)ret;
}

/*
 * prlimit(2) on another process needs CAP_SYS_RESOURCE unless the caller's uid and gid equal
 * the target's. CRIU reads every saved process's limits that way, so where the bounding set
 * lacks CAP_SYS_RESOURCE (sandboxes and containers often drop it) it cannot save a VM running a
 * process of another user, such as postgres ("Can't get rlimit 0: Operation not permitted").
 * The same limits are in /proc/PID/limits, which anyone may read: on exactly that failure, for
 * a read that sets nothing, they are read there. Everything else is the kernel's own answer.

 */
typedef unsigned long long limit_t;
struct limits {
	limit_t cur, max;
};
#define UNLIMITED (~0ULL)

static int parse_limit(const char *word, limit_t *value)
{
	char *end;

	if (strcmp(word, "unlimited") == 0) {
		*value = UNLIMITED;
		return 0;
	}
	errno = 0;
	*value = strtoull(word, &end, 10);
	return (errno || *end != '\0') ? -1 : 0;
}

static int limits_from_proc(pid_t pid, int resource, struct limits *old)
{
	char path[64], line[256], soft[32], hard[32];
	int index = -1, found = -1;
	FILE *file;

	snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
	file = fopen(path, "re");
	if (file == NULL)
		return -1;
	/* The header, then one line per resource in the kernel's order of resource numbers;
	 * the columns are "%-25s %-20s %-20s". */
	while (fgets(line, sizeof(line), file) != NULL) {
		if (index++ != resource || strlen(line) < 27)
			continue;
		if (sscanf(line + 26, "%31s %31s", soft, hard) == 2 &&
		    parse_limit(soft, &old->cur) == 0 && parse_limit(hard, &old->max) == 0)
			found = 0;
		break;
	}
	fclose(file);
	return found;
}

/* The next definition of syscall(): glibc's. */
static long next_syscall(long number, const long a[6])
{
	static long (*next)(long, ...);

	if (next == NULL)
		next = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
	return next(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* CRIU asks for the limits with syscall(__NR_prlimit64, …), not glibc's prlimit(). Like
 * glibc's own syscall(), this passes on six arguments whatever the call has. */
long syscall(long number, ...)
{
	va_list list;
	long a[6], ret;
	int i;

	va_start(list, number);
	for (i = 0; i < 6; i++)
		a[i] = va_arg(list, long);
	va_end(list);
	ret = next_syscall(number, a);
	if (ret < 0 && errno == EPERM && number == SYS_prlimit64 && (pid_t)a[0] > 0 && a[2] == 0 &&
	    a[3] != 0 && limits_from_proc((pid_t)a[0], (int)a[1], (struct limits *)a[3]) == 0)
		return 0;
	return ret;
}

/*
 * CRIU sizes its page pipes (and the pipe it tee()s pages through for a page server) with
 * F_SETPIPE_SZ up to 4 MiB. Above fs.pipe-max-size (1 MiB by default) only CAP_SYS_RESOURCE
 * may go, so where it is withheld the call fails with EPERM. For a page pipe CRIU then starts
 * another pipe, but the tee pipe of the lazy page server is left at 64 KiB, and serving a page
 * pipe of more than that fails ("page-pipe: splice/tee ... Bad file descriptor"): post-copy
 * (lazy pages) cannot work. On exactly that failure this asks for fs.pipe-max-size instead,
 * when that still grows the pipe; CRIU reads the size it got from the answer, and a page pipe
 * never holds more than the tee pipe can then take. Nothing host-wide changes.
 */
static long pipe_max_size(void)
{
	char text[32] = "";
	FILE *file = fopen("/proc/sys/fs/pipe-max-size", "re");
	long value = -1;

	if (file != NULL) {
		if (fgets(text, sizeof(text), file) != NULL)
			value = strtol(text, NULL, 10);
		fclose(file);
	}
	return value;
}

static int capped_pipe_size(int fd, long asked)
{
	long ret = syscall(SYS_fcntl, fd, F_SETPIPE_SZ, asked);
	long max, now;

	if (ret >= 0 || errno != EPERM)
		return (int)ret;
	max = pipe_max_size();
	now = syscall(SYS_fcntl, fd, F_GETPIPE_SZ, 0);
	if (max <= 0 || asked <= max || now < 0 || now >= max) {
		errno = EPERM;
		return -1;
	}
	return (int)syscall(SYS_fcntl, fd, F_SETPIPE_SZ, max);
}

static int fcntl_with(int fd, int command, va_list list)
{
	long argument = va_arg(list, long);

	if (command == F_SETPIPE_SZ)
		return capped_pipe_size(fd, argument);
	return (int)syscall(SYS_fcntl, fd, command, argument);
}

int fcntl(int fd, int command, ...)
{
	va_list list;
	int ret;

	va_start(list, command);
	ret = fcntl_with(fd, command, list);
	va_end(list);
	return ret;
}

int fcntl64(int fd, int command, ...)
{
	va_list list;
	int ret;

	va_start(list, command);
	ret = fcntl_with(fd, command, list);
	va_end(list);
	return ret;
}
