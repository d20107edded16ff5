/* bench_ports.h - loopback ports for the daemons a benchmark starts (header
 * only, shared by the bench_*.c programs). */
#ifndef BENCH_PORTS_H
#define BENCH_PORTS_H

#include "lib/common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* free_port - a port free on 127.0.0.1 now and not handed out before: the
 * kernel may give the port it just released to the next bind(0), and two
 * daemons must not be told the same port */
static int free_port(void)
{
	static int given[64];
	static size_t n_given;
	for (;;) {
		struct sockaddr_in sa = { .sin_family = AF_INET,
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof(sa);
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    getsockname(s, (struct sockaddr *)&sa, &len) < 0) {
			perror("free_port");
			exit(1);
		}
		close(s);
		int port = ntohs(sa.sin_port);
		size_t i = 0;
		while (i < n_given && given[i] != port)
			i++;
		if (i < n_given)
			continue;
		if (n_given < N_ELEMENTS(given))
			given[n_given++] = port;
		return port;
	}
}

/* port_open - something accepts connections on 127.0.0.1:port */
static bool port_open(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int s = socket(AF_INET, SOCK_STREAM, 0);
	bool ok = s >= 0 && connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (s >= 0)
		close(s);
	return ok;
}

#endif
