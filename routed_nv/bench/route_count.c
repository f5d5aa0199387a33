/* route_count: counts IPv4 /32 routes inside one prefix, per routing table, from rtnetlink
 * (one dump, then events), and says when a table reaches a count: the directory benchmark's
 * clock for both the project's arrival and the `ip -batch` floor, so that neither is timed by
 * a Python reader competing for the guest's CPU (routed_nv/bench/directory.py).
 *
 *   route_count BASE/PLEN TABLE...      (compiled by the bench with cc -O2)
 *
 * It prints "ready" after the dump. Then, per line "wait TABLE COUNT [TABLE COUNT...]" on
 * stdin, it answers "ok" at once and, when every TABLE has held its COUNT at least once since,
 * "reached TABLE SECONDS ..." with CLOCK_MONOTONIC (Python's time.monotonic()) of the moment
 * each did. "count TABLE" answers "count TABLE N". Any loss of events (ENOBUFS) is fatal:
 * "error ..." and exit status 3, never a wrong time. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_TABLES 8
#define BUF_SIZE (1 << 20)

struct table {
	uint32_t id;
	uint8_t *bits;
	long count;
	long target; /* -1: not waited for */
	double reached;
};

static struct table tables[MAX_TABLES];
static int ntables;
static uint32_t base, span;
static int waiting;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *what)
{
	printf("error %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(3);
}

static struct table *find(uint32_t id)
{
	for (int i = 0; i < ntables; i++)
		if (tables[i].id == id)
			return &tables[i];
	return NULL;
}

static void route(struct nlmsghdr *h)
{
	struct rtmsg *r = NLMSG_DATA(h);
	if (r->rtm_family != AF_INET || r->rtm_dst_len != 32)
		return;
	uint32_t id = r->rtm_table, dst = 0;
	int have_dst = 0;
	int len = RTM_PAYLOAD(h);
	for (struct rtattr *a = RTM_RTA(r); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == RTA_TABLE)
			id = *(uint32_t *)RTA_DATA(a);
		else if (a->rta_type == RTA_DST) {
			dst = ntohl(*(uint32_t *)RTA_DATA(a));
			have_dst = 1;
		}
	}
	struct table *t = find(id);
	if (!t || !have_dst || dst - base >= span)
		return;
	uint32_t i = dst - base;
	uint8_t bit = 1 << (i & 7), *byte = &t->bits[i >> 3];
	if (h->nlmsg_type == RTM_NEWROUTE && !(*byte & bit)) {
		*byte |= bit;
		t->count++;
	} else if (h->nlmsg_type == RTM_DELROUTE && (*byte & bit)) {
		*byte &= ~bit;
		t->count--;
	}
}

/* Whether the message ends a dump. */
static int handle(char *buf, ssize_t n)
{
	int done = 0;
	for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
		if (h->nlmsg_type == NLMSG_DONE)
			done = 1;
		else if (h->nlmsg_type == NLMSG_ERROR) {
			errno = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
			if (errno)
				fail("netlink");
		} else if (h->nlmsg_type == RTM_NEWROUTE || h->nlmsg_type == RTM_DELROUTE)
			route(h);
	}
	return done;
}

static void check(double at)
{
	if (!waiting)
		return;
	int all = 1;
	for (int i = 0; i < ntables; i++) {
		struct table *t = &tables[i];
		if (t->target >= 0 && t->reached < 0 && t->count == t->target)
			t->reached = at;
		if (t->target >= 0 && t->reached < 0)
			all = 0;
	}
	if (!all)
		return;
	printf("reached");
	for (int i = 0; i < ntables; i++)
		if (tables[i].target >= 0) {
			printf(" %u %.6f", tables[i].id, tables[i].reached);
			tables[i].target = -1;
		}
	printf("\n");
	fflush(stdout);
	waiting = 0;
}

static void command(char *line)
{
	char *word = strtok(line, " \n");
	if (word && !strcmp(word, "count")) {
		struct table *t = find(strtoul(strtok(NULL, " \n"), NULL, 10));
		printf("count %u %ld\n", t ? t->id : 0, t ? t->count : -1);
	} else if (word && !strcmp(word, "wait")) {
		char *id, *count;
		while ((id = strtok(NULL, " \n")) && (count = strtok(NULL, " \n"))) {
			struct table *t = find(strtoul(id, NULL, 10));
			if (!t) {
				printf("error no table %s\n", id);
				exit(2);
			}
			t->target = strtol(count, NULL, 10);
			t->reached = -1;
		}
		waiting = 1;
		printf("ok\n");
	} else {
		printf("error unknown command\n");
		exit(2);
	}
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: route_count BASE/PLEN TABLE...\n");
		return 2;
	}
	char *slash = strchr(argv[1], '/');
	struct in_addr addr;
	if (!slash)
		return 2;
	*slash = 0;
	if (inet_pton(AF_INET, argv[1], &addr) != 1)
		return 2;
	base = ntohl(addr.s_addr);
	span = 1u << (32 - atoi(slash + 1));
	for (int i = 2; i < argc && ntables < MAX_TABLES; i++) {
		struct table *t = &tables[ntables++];
		t->id = strtoul(argv[i], NULL, 10);
		t->bits = calloc(span / 8 + 1, 1);
		t->target = -1;
	}
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	int size = 256 << 20; /* a burst of 100,000 routes while we are descheduled */
	if (fd < 0)
		fail("socket");
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	struct sockaddr_nl local = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_IPV4_ROUTE};
	if (bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0)
		fail("bind");
	struct {
		struct nlmsghdr h;
		struct rtmsg r;
	} dump = {
		.h = {.nlmsg_len = sizeof(dump), .nlmsg_type = RTM_GETROUTE,
		      .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1},
		.r = {.rtm_family = AF_INET},
	};
	if (send(fd, &dump, sizeof(dump), 0) < 0)
		fail("dump");
	char *buf = malloc(BUF_SIZE);
	for (int done = 0; !done;) {
		ssize_t n = recv(fd, buf, BUF_SIZE, 0);
		if (n < 0)
			fail("recv");
		done = handle(buf, n);
	}
	printf("ready\n");
	fflush(stdout);
	char line[4096];
	struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
	for (;;) {
		if (poll(fds, 2, -1) < 0)
			fail("poll");
		if (fds[0].revents & POLLIN) {
			ssize_t n = recv(fd, buf, BUF_SIZE, MSG_DONTWAIT);
			if (n < 0 && errno != EAGAIN)
				fail("recv"); /* ENOBUFS: events lost, the counts are wrong */
			if (n > 0) {
				handle(buf, n);
				check(now());
			}
		}
		if (fds[1].revents & (POLLIN | POLLHUP)) {
			if (!fgets(line, sizeof(line), stdin))
				return 0;
			command(line);
			check(now());
		}
	}
}
