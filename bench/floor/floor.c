/*
 * floor: the least a feather-like start can do, as a yardstick for `feather run --rm`.
 *
 *   floor [--no-net] SCRATCH_DIR COMMAND [ARG...]
 *
 * new mount/pid/ipc/uts/net/cgroup namespaces -> mounts private -> an overlay whose lower layer
 * is the host's / and whose upper layer is a fresh folder under SCRATCH_DIR -> pivot_root into
 * it -> exec COMMAND as pid 1 of the new pid namespace. The parent waits, removes the folders it
 * made and exits with COMMAND's status.
 *
 * Deliberately left out (feather does them): a fresh /proc, /sys, /dev and /run, overlays for
 * other filesystems mounted under /, hiding a state folder, cgroups, capability reduction, a
 * keeper process and a state store. Mounts need no cleanup: they live only in the child's mount
 * namespace, which the kernel drops when the child exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what, const char *target)
{
	fprintf(stderr, "floor: %s %s: %s\n", what, target ? target : "", strerror(errno));
	_exit(125);
}

static void path_in(char *out, size_t size, const char *dir, const char *name)
{
	if ((size_t)snprintf(out, size, "%s/%s", dir, name) >= size) {
		errno = ENAMETOOLONG;
		die("path too long:", dir);
	}
}

/* In the child: the new root, then the command. Never returns. */
static void enter_and_exec(const char *dir, char **argv)
{
	char upper[4096], work[4096], root[4096], options[3 * 4096 + 64];

	path_in(upper, sizeof upper, dir, "upper");
	path_in(work, sizeof work, dir, "work");
	path_in(root, sizeof root, dir, "root");
	/* The host's mount events must not reach us, nor ours the host. */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("make mounts private", "/");
	snprintf(options, sizeof options, "lowerdir=/,upperdir=%s,workdir=%s", upper, work);
	if (mount("overlay", root, "overlay", 0, options) < 0)
		die("mount overlay on", root);
	/* pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only
	 * the overlay. */
	if (chdir(root) < 0)
		die("chdir", root);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		die("pivot_root", root);
	if (umount2(".", MNT_DETACH) < 0)
		die("detach the old root", NULL);
	if (chdir("/") < 0)
		die("chdir", "/");
	execvp(argv[0], argv);
	die("exec", argv[0]);
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (type == FTW_DP)
		return rmdir(path) < 0 ? -1 : 0;
	return unlink(path) < 0 ? -1 : 0;
}

/* The command may have written to its layer: remove the whole folder, not only what we made. */
static void remove_scratch(const char *dir)
{
	if (nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
		fprintf(stderr, "floor: cannot remove %s: %s\n", dir, strerror(errno));
}

int main(int argc, char **argv)
{
	int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET |
		    CLONE_NEWCGROUP;
	int first = 1;
	char dir[4096];
	pid_t child;
	int status;

	if (argc > 1 && strcmp(argv[1], "--no-net") == 0) {
		flags &= ~CLONE_NEWNET;
		first = 2;
	}
	if (argc - first < 2) {
		fprintf(stderr, "usage: floor [--no-net] SCRATCH_DIR COMMAND [ARG...]\n");
		return 2;
	}
	path_in(dir, sizeof dir, argv[first], "floor.XXXXXX");
	if (!mkdtemp(dir))
		die("mkdtemp", dir);
	for (const char *const *name = (const char *const[]){ "upper", "work", "root", NULL }; *name;
	     name++) {
		char path[4096];
		path_in(path, sizeof path, dir, *name);
		if (mkdir(path, 0700) < 0)
			die("mkdir", path);
	}
	/* One clone into every new namespace, as feather's keeper does: the child is pid 1 of its
	 * pid namespace, and this process keeps the host's namespaces to clean up from. */
	child = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
	if (child < 0)
		die("clone", NULL);
	if (child == 0)
		enter_and_exec(dir, argv + first + 1);
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR)
			die("waitpid", NULL);
	remove_scratch(dir);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}
