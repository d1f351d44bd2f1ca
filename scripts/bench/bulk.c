/* bulk: large-body HTTP/1.1 load for scripts/bench-peers.sh (downloads and
 * uploads of one big body after another on one keep-alive connection).
 *
 *   bulk get  HOST PORT PATH SECONDS            GET PATH again and again
 *   bulk post HOST PORT PATH SECONDS BYTES      POST a BYTES body again and again
 *   bulk sink PORT                              a backend: reads each request and
 *                                               its Content-Length body (256 KiB
 *                                               reads, discarded), then answers
 *                                               `200 ok`; a thread per connection
 *
 * One connection, blocking sockets, 256 KiB reads and writes; a new connection
 * only if the server closes one. Runs for SECONDS, stopping mid-body when the
 * time is up. Prints one line of key=value: bytes (body bytes moved, partial
 * last body included), secs (elapsed), requests (bodies completed and
 * answered), mibps (bytes / secs in MiB/s), errors (non-2xx answers and broken
 * connections), reconnects, last_bad_status (the last non-2xx status, 0: none).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

static char buf[CHUNK];
static double t_end;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int dial(const char *host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, host, &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* a receive timeout so the end of the run is noticed inside a blocked read */
  struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

/* Reads a response head into buf; returns its length, with *status,
 * *clen (-1 if absent) and *close_after set, and leaves any body bytes read
 * with it counted in *extra. 0 when time is up, -1 on a broken connection. */
static int read_head(int fd, int *status, long long *clen, int *close_after,
                     size_t *extra) {
  size_t len = 0;
  for (;;) {
    if (now() > t_end) return 0;
    ssize_t n = recv(fd, buf + len, 65536 - len - 1, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return -1;
    len += n;
    buf[len] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    if (!end) {
      if (len >= 65535) return -1;
      continue;
    }
    size_t hl = end + 4 - buf;
    *status = atoi(buf + 9);
    *clen = -1;
    *close_after = 0;
    for (char *l = strstr(buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
      if (!strncasecmp(l + 2, "content-length:", 15)) *clen = atoll(l + 17);
      if (!strncasecmp(l + 2, "connection:", 11) && strcasestr(l + 13, "close") &&
          strcasestr(l + 13, "close") < strstr(l + 2, "\r\n"))
        *close_after = 1;
    }
    *extra = len - hl;
    return (int)hl;
  }
}

/* --- sink: the upload rows' backend ----------------------------------------- */
static void *serve(void *arg) {
  int fd = (int)(intptr_t)arg;
  char *b = malloc(CHUNK + 1);
  size_t len = 0;
  static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  for (;;) {
    char *end;
    while (!(b[len] = 0, end = strstr(b, "\r\n\r\n"))) {
      if (len >= 65536) goto out;
      ssize_t n = recv(fd, b + len, 65536 - len, 0);
      if (n <= 0) goto out;
      len += n;
      b[len] = 0;
    }
    size_t hl = end + 4 - b;
    long long clen = 0;
    for (char *l = strstr(b, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n"))
      if (!strncasecmp(l + 2, "content-length:", 15)) clen = atoll(l + 17);
    long long have = len - hl;
    if (have >= clen) { /* body (and maybe the next request) already here */
      size_t used = hl + clen;
      memmove(b, b + used, len - used);
      len -= used;
    } else {
      long long left = clen - have;
      while (left > 0) {
        ssize_t n = recv(fd, b, left < CHUNK ? left : CHUNK, 0);
        if (n <= 0) goto out;
        left -= n;
      }
      len = 0;
    }
    if (send(fd, ok, sizeof ok - 1, MSG_NOSIGNAL) != sizeof ok - 1) goto out;
  }
out:
  close(fd);
  free(b);
  return NULL;
}

static int sink(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1024) < 0) {
    perror("bulk sink");
    return 1;
  }
  for (;;) {
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) continue;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    if (pthread_create(&t, &at, serve, (void *)(intptr_t)fd)) close(fd);
    pthread_attr_destroy(&at);
  }
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "sink")) return sink(atoi(argv[2]));
  if (argc < 6 || (strcmp(argv[1], "get") && strcmp(argv[1], "post")) ||
      (!strcmp(argv[1], "post") && argc < 7)) {
    fprintf(stderr, "usage: bulk get|post HOST PORT PATH SECONDS [BYTES] | bulk sink PORT\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int post = !strcmp(argv[1], "post");
  const char *host = argv[2], *path = argv[4];
  int port = atoi(argv[3]);
  double secs = atof(argv[5]);
  long long size = post ? atoll(argv[6]) : 0;
  char req[512];
  int rl = post ? snprintf(req, sizeof req,
                           "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: "
                           "application/octet-stream\r\nContent-Length: %lld\r\n\r\n",
                           path, host, port, size)
                : snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                           path, host, port);
  char *payload = malloc(CHUNK);
  memset(payload, 'x', CHUNK);
  long long bytes = 0, requests = 0, errors = 0, reconnects = 0;
  int bad = 0; /* the last non-2xx status */
  double t0 = now();
  t_end = t0 + secs;
  int fd = -1;
  while (now() < t_end) {
    if (fd < 0) {
      fd = dial(host, port);
      if (fd < 0) {
        errors++;
        usleep(10000);
        continue;
      }
    }
    if (send(fd, req, rl, 0) != rl) goto broken;
    if (post) {
      long long left = size;
      while (left > 0 && now() < t_end) {
        ssize_t n = send(fd, payload, left < CHUNK ? left : CHUNK, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) goto broken;
        left -= n;
        bytes += n;
      }
      if (left > 0) break;
    }
    int status, close_after;
    long long clen;
    size_t extra;
    int h = read_head(fd, &status, &clen, &close_after, &extra);
    if (h == 0) break;
    if (h < 0) goto broken;
    long long left = (clen < 0 ? 0 : clen) - (long long)extra;
    if (!post) bytes += extra;
    while (left > 0) {
      if (now() > t_end) break;
      ssize_t n = recv(fd, buf, CHUNK, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) goto broken;
      left -= n;
      if (!post) bytes += n;
    }
    if (left > 0) break;
    requests++;
    if (status < 200 || status > 299) {
      errors++;
      bad = status;
    }
    if (close_after || clen < 0) {
      close(fd);
      fd = -1;
      reconnects++;
    }
    continue;
  broken:
    if (now() < t_end) errors++;
    close(fd);
    fd = -1;
    reconnects++;
  }
  double el = now() - t0;
  if (fd >= 0) close(fd);
  printf("bytes=%lld secs=%.3f requests=%lld mibps=%.1f errors=%lld reconnects=%lld "
         "last_bad_status=%d\n",
         bytes, el, requests, bytes / el / 1048576.0, errors, reconnects, bad);
  return 0;
}
