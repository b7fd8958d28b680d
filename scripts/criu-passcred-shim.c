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
 */
#define _GNU_SOURCE
#include <errno.h>
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
