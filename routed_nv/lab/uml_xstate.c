/*
 * Preloaded into linux.uml (LD_PRELOAD) by routed_nv/lab/uml.py.
 *
 * A UML kernel switches its processes' FPU state with ptrace(PTRACE_GETREGSET/SETREGSET,
 * NT_X86_XSTATE) on a buffer of its own fixed size (832 bytes: x87, SSE, AVX). The host kernel
 * refuses a SETREGSET that is not the whole XSAVE area (EFAULT unless the length is exactly
 * fpu_user_cfg.max_size), which on a CPU with AVX-512 or AMX is larger (11008 bytes with AMX):
 * the guest's init dies at once ("userspace - ptrace set fp regs failed, errno = 14", then
 * "Attempted to kill init"). Debian's UML 6.1 and 6.12 both do.
 *
 * This wrapper gives the host what it wants and UML what it knows: each short read is a whole
 * read, kept per UML buffer (one per guest task, so the state beyond UML's part is saved and
 * restored per task too), of which UML gets its part; each short write is that whole area with
 * UML's part written over its start. Every other ptrace call passes through untouched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

#define SLOTS 8192 /* guest tasks' buffers remembered; beyond that a write keeps the host's */
#define PROBE_SIZE 65536

struct slot {
	void *key;            /* UML's buffer for one guest task */
	unsigned char *whole; /* the host's whole XSAVE area last read for it */
};

static struct slot slots[SLOTS];
static size_t whole_size; /* the host's XSAVE area size, learned on the first read */

/* libc's own ptrace */
static long real_ptrace(int request, pid_t pid, void *addr, void *data)
{
	static ptrace_fn fn;

	if (fn == NULL)
		fn = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
	return fn(request, pid, addr, data);
}

/* The slot of `key`, made when `create` and there is room; NULL otherwise. */
static struct slot *slot_of(void *key, int create)
{
	size_t i = ((uintptr_t)key >> 4) % SLOTS;

	for (size_t n = 0; n < SLOTS; n++, i = (i + 1) % SLOTS) {
		if (slots[i].key == key)
			return &slots[i];
		if (slots[i].key == NULL) {
			if (!create)
				return NULL;
			slots[i].whole = malloc(whole_size);
			if (slots[i].whole == NULL)
				return NULL;
			slots[i].key = key;
			return &slots[i];
		}
	}
	return NULL;
}

static long read_whole(pid_t pid, void *addr, unsigned char *into)
{
	struct iovec iov = { .iov_base = into, .iov_len = whole_size };

	return real_ptrace(PTRACE_GETREGSET, pid, addr, &iov);
}

static int learn_whole_size(pid_t pid, void *addr)
{
	unsigned char *probe;
	struct iovec iov;

	if (whole_size != 0)
		return 0;
	probe = malloc(PROBE_SIZE);
	if (probe == NULL)
		return -1;
	iov.iov_base = probe;
	iov.iov_len = PROBE_SIZE;
	if (real_ptrace(PTRACE_GETREGSET, pid, addr, &iov) < 0) {
		free(probe);
		return -1;
	}
	whole_size = iov.iov_len;
	free(probe);
	return 0;
}

static long get_xstate(pid_t pid, void *addr, struct iovec *iov)
{
	struct slot *slot;
	unsigned char *scratch = NULL, *whole;
	long ret;

	if (learn_whole_size(pid, addr) < 0 || iov->iov_len >= whole_size)
		return real_ptrace(PTRACE_GETREGSET, pid, addr, iov);
	slot = slot_of(iov->iov_base, 1);
	whole = slot ? slot->whole : (scratch = malloc(whole_size));
	if (whole == NULL)
		return real_ptrace(PTRACE_GETREGSET, pid, addr, iov);
	ret = read_whole(pid, addr, whole);
	if (ret >= 0)
		memcpy(iov->iov_base, whole, iov->iov_len);
	free(scratch);
	return ret;
}

static long set_xstate(pid_t pid, void *addr, struct iovec *iov)
{
	struct slot *slot;
	unsigned char *scratch = NULL, *whole;
	struct iovec full;
	int saved;
	long ret;

	if (learn_whole_size(pid, addr) < 0 || iov->iov_len >= whole_size)
		return real_ptrace(PTRACE_SETREGSET, pid, addr, iov);
	slot = slot_of(iov->iov_base, 0);
	if (slot != NULL) {
		whole = slot->whole;
	} else {
		/* never read for this buffer (a new task): the rest is the host's current state */
		whole = scratch = malloc(whole_size);
		if (whole == NULL || read_whole(pid, addr, whole) < 0) {
			saved = errno;
			free(scratch);
			errno = saved;
			return -1;
		}
	}
	memcpy(whole, iov->iov_base, iov->iov_len);
	full.iov_base = whole;
	full.iov_len = whole_size;
	ret = real_ptrace(PTRACE_SETREGSET, pid, addr, &full);
	saved = errno;
	free(scratch);
	errno = saved;
	return ret;
}

long ptrace(enum __ptrace_request request, ...)
{
	va_list ap;
	pid_t pid;
	void *addr, *data;

	va_start(ap, request);
	pid = va_arg(ap, pid_t);
	addr = va_arg(ap, void *);
	data = va_arg(ap, void *);
	va_end(ap);
	if ((uintptr_t)addr == NT_X86_XSTATE && data != NULL) {
		if (request == PTRACE_GETREGSET)
			return get_xstate(pid, addr, data);
		if (request == PTRACE_SETREGSET)
			return set_xstate(pid, addr, data);
	}
	return real_ptrace(request, pid, addr, data);
}
