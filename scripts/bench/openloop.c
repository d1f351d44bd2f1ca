/* openloop: a fixed-rate (open-loop) HTTP/1.1 keep-alive load generator for
 * scripts/bench-peers.sh (Debian has no wrk2/vegeta/oha).
 *
 *   openloop HOST PORT PATH RATE SECONDS CONNS [LOG]
 *
 * Request i is due at t0 + i/RATE whatever happened before it; it goes out on
 * the first idle connection of a fixed pool of CONNS keep-alive connections (no
 * pipelining). Its latency runs from the moment it was due, not from when it
 * could be sent, so a balancer that falls behind pays for the queue it causes
 * (no coordinated omission, as in wrk2). Requests still unanswered 3 s after
 * the run count with the latency they had reached by then. One thread, epoll;
 * sub-millisecond send times via epoll_pwait2 (Linux >= 5.11).
 *
 * Prints one line of key=value: due, completed, errors, non2xx, unfinished,
 * rate (achieved, completed/s), latency percentiles in ms (p50 p90 p99 p999
 * max) and reconnects.
 *
 * The server may close a connection between requests (lb's header_timeout
 * closes one that sent nothing for 10 s, as nginx's client_header_timeout
 * does after 60 s; `Connection: close` in a response): like a browser, the
 * generator then opens a new connection and sends the request there. A
 * connection idle for over a second is checked (MSG_PEEK) before it is used;
 * a write that fails anyway (SIGPIPE is ignored) is retried on a new
 * connection. Neither is an error; `reconnects` counts them. A request the
 * server accepted and then failed to answer is an error.
 *
 * With LOG (used by scripts/scenarios.py), one line per request is written
 * there: "due_us latency_us status backend" — due time in microseconds since
 * the run's start, latency from that due time, the HTTP status (0: the
 * connection failed; -1: unfinished when the run ended) and the response's
 * X-Backend header ("-" when absent).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ 16384

typedef struct {
  int fd;
  int busy;
  int close_after; /* the response in flight said Connection: close */
  uint64_t idle_since;
  uint64_t due; /* intended send time of the request in flight */
  size_t len;
  char backend[64]; /* X-Backend of the response being parsed */
  char buf[BUFSZ];
} conn_t;

static struct sockaddr_in addr;
static char req[512];
static size_t reqlen;
static conn_t *conns;
static int *idle, nidle, epfd;
static uint32_t *lat; /* microseconds */
static uint64_t ncompleted, nerrors, nnon2xx, nreconnects;
static FILE *logf;
static uint64_t t0;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  perror(what);
  exit(2);
}

static void open_conn(int i) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
  conns[i].fd = fd;
  conns[i].busy = 0;
  conns[i].close_after = 0;
  conns[i].idle_since = now_ns();
  conns[i].len = 0;
  idle[nidle++] = i;
}

/* Closes connection i and opens a new one in its place (idle). */
static void drop(int i) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, conns[i].fd, NULL);
  close(conns[i].fd);
  open_conn(i);
}

/* Connection i, just taken from the idle list, was closed by the server
 * before a request went out on it: replace it; not an error. */
static void reconnect(int i) {
  nreconnects++;
  drop(i);
}

static void record(uint64_t due, uint64_t t, int status, const char *backend) {
  uint64_t us = t > due ? (t - due) / 1000 : 0;
  lat[ncompleted++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
  if (logf)
    fprintf(logf, "%llu %llu %d %s\n", (unsigned long long)((due > t0 ? due - t0 : 0) / 1000),
            (unsigned long long)us, status, backend && *backend ? backend : "-");
}

/* Copies the value of header line l ("Name: value\r\n...") into out. */
static void header_value(const char *l, size_t name_len, char *out, size_t cap) {
  const char *v = l + name_len;
  while (*v == ' ' || *v == '\t') v++;
  size_t n = 0;
  while (v[n] && v[n] != '\r' && v[n] != ' ' && n + 1 < cap) n++;
  memcpy(out, v, n);
  out[n] = 0;
}

/* A whole response in c->buf? Returns its length, 0 if not yet, -1 if garbage. */
static long response_len(conn_t *c, int *status) {
  c->buf[c->len] = 0;
  char *end = strstr(c->buf, "\r\n\r\n");
  if (!end) return c->len >= BUFSZ - 1 ? -1 : 0;
  if (c->len < 12 || strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
  *status = atoi(c->buf + 9);
  size_t head = (size_t)(end - c->buf) + 4;
  long clen = -1;
  int chunked = 0;
  for (char *l = strstr(c->buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
    if (strncasecmp(l + 2, "content-length:", 15) == 0) clen = atol(l + 17);
    if (strncasecmp(l + 2, "connection:", 11) == 0 && strcasestr(l + 2, "close") &&
        strcasestr(l + 2, "close") < strstr(l + 2, "\r\n"))
      c->close_after = 1;
    if (logf && strncasecmp(l + 2, "x-backend:", 10) == 0)
      header_value(l + 2, 10, c->backend, sizeof c->backend);
    if (strncasecmp(l + 2, "transfer-encoding:", 18) == 0 && strcasestr(l + 2, "chunked") &&
        strcasestr(l + 2, "chunked") < strstr(l + 2, "\r\n"))
      chunked = 1;
  }
  if (chunked) { /* small bodies only: find the last chunk */
    char *z = strstr(c->buf + head - 2, "\r\n0\r\n\r\n");
    return z ? (long)(z - c->buf) + 7 : 0;
  }
  if (clen < 0) clen = 0;
  return (size_t)clen + head <= c->len ? (long)(head + (size_t)clen) : 0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(uint64_t n, double p) {
  if (n == 0) return 0;
  uint64_t k = (uint64_t)(p * (double)n);
  if (k >= n) k = n - 1;
  return lat[k] / 1000.0;
}

int main(int argc, char **argv) {
  if (argc != 7 && argc != 8) {
    fprintf(stderr, "usage: %s HOST PORT PATH RATE SECONDS CONNS [LOG]\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a write to a closed connection fails with EPIPE instead */
  if (argc == 8) {
    logf = fopen(argv[7], "w");
    if (!logf) die("fopen");
    setvbuf(logf, NULL, _IOFBF, 1 << 20);
  }
  double rate = atof(argv[4]), secs = atof(argv[5]);
  int nconn = atoi(argv[6]);
  if (rate <= 0 || secs <= 0 || nconn <= 0) return 2;
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) die("inet_pton");
  reqlen = (size_t)snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%s\r\n\r\n", argv[3],
                            argv[1], argv[2]);
  uint64_t total = (uint64_t)(rate * secs);
  conns = calloc((size_t)nconn, sizeof *conns);
  idle = calloc((size_t)nconn, sizeof *idle);
  lat = calloc(total + 1, sizeof *lat);
  if (!conns || !idle || !lat) die("calloc");
  epfd = epoll_create1(0);
  if (epfd < 0) die("epoll_create1");
  for (int i = 0; i < nconn; i++) open_conn(i);

  double interval = 1e9 / rate;
  t0 = now_ns() + 20000000ull;
  uint64_t sent = 0, inflight = 0;
  uint64_t deadline = t0 + (uint64_t)(secs * 1e9) + 3000000000ull, last_done = t0;
  struct epoll_event evs[256];
  for (;;) {
    uint64_t now = now_ns();
    while (sent < total && nidle > 0) {
      uint64_t due = t0 + (uint64_t)((double)sent * interval);
      if (due > now) break;
      int i = idle[--nidle];
      conn_t *c = &conns[i];
      char peek;
      if (now - c->idle_since > 1000000000ull &&
          recv(c->fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT) != -1) {
        reconnect(i); /* closed (0) or sent something unasked (a 408): stale */
        continue;
      }
      if (write(c->fd, req, reqlen) != (ssize_t)reqlen) {
        reconnect(i); /* closed under us: the request was not sent; resend */
        continue;
      }
      c->due = due;
      c->busy = 1;
      c->close_after = 0;
      c->backend[0] = 0;
      sent++;
      inflight++;
    }
    if (sent == total && inflight == 0) break;
    if (now >= deadline) break;
    uint64_t wake = deadline;
    if (sent < total && nidle > 0) {
      uint64_t due = t0 + (uint64_t)((double)sent * interval);
      if (due < wake) wake = due;
    }
    struct timespec ts = {0, 0};
    if (wake > now) {
      ts.tv_sec = (time_t)((wake - now) / 1000000000ull);
      ts.tv_nsec = (long)((wake - now) % 1000000000ull);
    }
    int n = epoll_pwait2(epfd, evs, 256, &ts, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_pwait2");
    }
    now = now_ns();
    for (int k = 0; k < n; k++) {
      int i = (int)evs[k].data.u32;
      conn_t *c = &conns[i];
      ssize_t r = read(c->fd, c->buf + c->len, BUFSZ - 1 - c->len);
      if (r < 0 && errno == EAGAIN) continue;
      int status = 0;
      long whole = 0;
      if (r > 0) {
        c->len += (size_t)r;
        whole = response_len(c, &status);
        if (whole == 0) continue;
      }
      if (r > 0 && whole > 0 && c->busy) {
        record(c->due, now, status, c->backend);
        last_done = now;
        if (status < 200 || status > 299) nnon2xx++;
        c->busy = 0;
        inflight--;
        if (c->close_after) {
          drop(i);
          continue;
        }
        size_t rest = c->len - (size_t)whole;
        memmove(c->buf, c->buf + whole, rest);
        c->len = rest;
        c->idle_since = now;
        idle[nidle++] = i;
        continue;
      }
      /* closed, reset or garbage: the request in flight failed; reconnect
       * (an idle connection the server closed is merely replaced) */
      if (!c->busy) nreconnects++;
      if (c->busy) {
        nerrors++;
        inflight--;
        if (logf) /* in the log only: the summary's percentiles stay as before */
          fprintf(logf, "%llu %llu 0 -\n", (unsigned long long)((c->due - t0) / 1000),
                  (unsigned long long)((now - c->due) / 1000));
      }
      for (int j = 0; j < nidle; j++)
        if (idle[j] == i) idle[j] = idle[--nidle];
      drop(i);
    }
  }
  uint64_t end = now_ns();
  uint64_t unfinished = 0;
  for (int i = 0; i < nconn; i++)
    if (conns[i].busy) {
      record(conns[i].due, end, -1, NULL);
      unfinished++;
    }
  for (; sent < total; sent++) { /* due but never sent: lower bound of their latency */
    uint64_t due = t0 + (uint64_t)((double)sent * interval);
    if (due < end) {
      record(due, end, -1, NULL);
      unfinished++;
    }
  }
  if (logf) fclose(logf);
  uint64_t done = ncompleted - unfinished;
  qsort(lat, ncompleted, sizeof *lat, cmp_u32);
  double span = (double)(last_done - t0) / 1e9;
  printf("due=%llu completed=%llu errors=%llu non2xx=%llu unfinished=%llu rate=%.1f "
         "p50=%.3f p90=%.3f p99=%.3f p999=%.3f max=%.3f reconnects=%llu\n",
         (unsigned long long)(done + unfinished), (unsigned long long)done,
         (unsigned long long)nerrors, (unsigned long long)nnon2xx,
         (unsigned long long)unfinished, span > 0 ? (double)done / span : 0.0,
         pct(ncompleted, 0.50), pct(ncompleted, 0.90), pct(ncompleted, 0.99),
         pct(ncompleted, 0.999), ncompleted ? lat[ncompleted - 1] / 1000.0 : 0.0,
         (unsigned long long)nreconnects);
  return 0;
}
