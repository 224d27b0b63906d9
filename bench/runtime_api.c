// The cheapest Runtime API there can be, for bench/runtime_ceiling.py: one runtime's connection,
// GET /invocation/next answered with a canned event, every POST with 202, nothing logged or
// checked. It measures how many invocations per second the runtime itself can take when the
// platform costs (almost) nothing.
//
//     runtime_api PORT SECONDS   listens on 127.0.0.1:PORT; after the first 1000 results it
//                                counts results for SECONDS, then prints results/s and exits
//     runtime_api fd:N SECONDS   the same on listening socket N, inherited: a sandbox's own
//                                Runtime API socket, which lives in its network namespace
//     runtime_api conn:N SECONDS the same on socket N, inherited and connected already: the
//                                platform's end of a zygote-forked runtime's socketpair
//     ... SECONDS PAUSE_US       each GET /invocation/next answered PAUSE_US microseconds late,
//                                so that the runtime sleeps before each event, as it does
//                                between a platform's invocations (its waking up is then counted)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char EVENT[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    "Lambda-Runtime-Aws-Request-Id: 8476a536-e9f4-11e8-9739-2dfe598c3fcd\r\n"
    "Lambda-Runtime-Deadline-Ms: 9999999999999\r\n"
    "Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:f\r\n"
    "Lambda-Runtime-Trace-Id: Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=0\r\n"
    "Content-Length: 2\r\n\r\n{}";
static const char ACCEPTED[] =
    "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"OK\"}";

static int send_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n <= 0) return -1;
        data += n;
        size -= (size_t)n;
    }
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: runtime_api PORT|fd:N|conn:N SECONDS [PAUSE_US]\n");
        return 2;
    }
    int one = 1, listener = -1, runtime = -1;
    double seconds = atof(argv[2]);
    long pause_us = argc > 3 ? atol(argv[3]) : 0;
    if (strncmp(argv[1], "conn:", 5) == 0) {
        runtime = atoi(argv[1] + 5);  // the platform's end is non-blocking: this program blocks
        fcntl(runtime, F_SETFL, fcntl(runtime, F_GETFL) & ~O_NONBLOCK);
    } else if (strncmp(argv[1], "fd:", 3) == 0) {
        listener = atoi(argv[1] + 3);  // may be non-blocking (the platform's): wait, then accept
        struct pollfd ready = {.fd = listener, .events = POLLIN};
        if (poll(&ready, 1, 30000) != 1) {
            fprintf(stderr, "runtime_api: no connection on fd %d\n", listener);
            return 1;
        }
    } else {
        listener = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 1)) {
            perror("runtime_api: listen");
            return 1;
        }
    }
    if (runtime < 0)
        runtime = accept(listener, NULL, NULL);
    if (runtime < 0) {
        perror("runtime_api: accept");
        return 1;
    }
    setsockopt(runtime, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static char buffer[1 << 16];
    size_t held = 0;
    long results = 0;
    double started = 0;
    for (;;) {
        ssize_t n = read(runtime, buffer + held, sizeof buffer - held);
        if (n <= 0) break;  // the runtime left before the count was done
        held += (size_t)n;
        for (;;) {  // every complete request in the buffer (the runtime pipelines its GET)
            char *end = memmem(buffer, held, "\r\n\r\n", 4);
            if (end == NULL) break;
            size_t head = (size_t)(end + 4 - buffer), body = 0;
            char *length = memmem(buffer, head, "Content-Length:", 15);
            if (length != NULL) body = strtoul(length + 15, NULL, 10);
            if (held < head + body) break;
            int post = buffer[0] == 'P';
            memmove(buffer, buffer + head + body, held - head - body);
            held -= head + body;
            if (!post) {
                if (pause_us > 0) usleep((useconds_t)pause_us);
                if (send_all(runtime, EVENT, sizeof EVENT - 1)) return 1;
                continue;
            }
            if (send_all(runtime, ACCEPTED, sizeof ACCEPTED - 1)) return 1;
            if (++results == 1000) started = now();  // past the warm-up
            if (started > 0 && now() - started > seconds) {
                printf("%.0f\n", (results - 1000) / (now() - started));
                return 0;
            }
        }
    }
    fprintf(stderr, "runtime_api: the runtime closed its connection after %ld results\n", results);
    return 1;
}
