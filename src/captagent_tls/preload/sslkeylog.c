/*
 * sslkeylog.so: an OpenSSL key-log library to preload into a TLS server that cannot write
 * key logs itself (Kamailio 5.x, OpenSIPS, Asterisk, FreeSWITCH, SIPp ...).
 *
 *   LD_PRELOAD=/path/to/sslkeylog.so SSLKEYLOG_UDP=127.0.0.1:5999 kamailio ...
 *
 * It registers OpenSSL's key-log callback (OpenSSL 1.1.1 and 3.x) on every TLS context the
 * process creates and hands each NSS key-log line
 *   - to the file named by SSLKEYLOGFILE: one write(2) per line, newline included, on a
 *     descriptor opened O_APPEND for that line, so the many processes of a forking server
 *     never interleave lines and a rotated or deleted file is recreated (mode 0600);
 *   - and/or as one UDP datagram per line to SSLKEYLOG_UDP (HOST:PORT, an IPv4 or IPv6
 *     literal, [::1]:PORT for IPv6; loopback only unless SSLKEYLOG_UDP_REMOTE=1), which is
 *     what `captagent-tls --keylog-listen udp://HOST:PORT` takes.
 *
 * How it hooks.  The process's own calls to SSL_CTX_new, SSL_CTX_new_ex, SSL_new,
 * SSL_set_SSL_CTX and SSL_CTX_set/get_keylog_callback bind to the definitions here, because a
 * preloaded library comes before libssl in the global symbol lookup; that holds for a libssl
 * loaded later by a dlopen'ed module too (Kamailio's tls.so).  The real functions are found
 * with dlsym(RTLD_NEXT), or, when libssl is not in the global scope (a module dlopen'ed with
 * RTLD_LOCAL, as Python loads _ssl), in the libssl that is loaded.  Not covered: a module
 * dlopen'ed with RTLD_DEEPBIND binds to its own libssl before the global scope, so its calls
 * never reach us.  Catching those would mean wrapping dlopen, which changes how every
 * dlopen of the host resolves names relative to its caller: not worth it for a case none of
 * the servers above is known to use (the tests show that Kamailio 5.6's tls.so reaches us).
 *
 * What it must never do: disturb the host.  No threads; no allocation when a line is
 * delivered (a stack buffer); errno saved and restored; the file opened per line, and the
 * one UDP socket checked by inode before each use, all O_CLOEXEC, so a fork, a daemon closing
 * every descriptor or a privilege drop cannot leave us writing into someone else's
 * descriptor; non-blocking I/O, errors ignored; no lock waited for while a line is
 * delivered; nothing at all when neither destination is set; a key-log callback the host
 * sets itself is remembered (in the context's ex_data) and still called, and
 * SSL_CTX_get_keylog_callback returns it, not ours.
 *
 * Built as a plain shared library against the OpenSSL headers only (it does not link libssl:
 * it uses whichever libssl the host loads):
 *   cc -shared -fPIC -O2 -fvisibility=hidden -o sslkeylog.so sslkeylog.c -ldl -lpthread
 * (captagent-tls-keylog --build does this; the flags are in build.py).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>

#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "OpenSSL 1.1.1 or later is needed: SSL_CTX_set_keylog_callback appeared in 1.1.1"
#endif

#define EXPORT __attribute__((visibility("default")))

/* An NSS key-log line is under 300 bytes (label, 64 hex digits, at most 96 more); OpenSSL
 * never makes a longer one, and a longer one would not be one we can use. */
#define MAX_LINE 1024

/* -- configuration, read once by the constructor ------------------------------------------- */

static char file_path[PATH_MAX];           /* "" = no file */
static struct sockaddr_storage udp_peer;   /* udp_peer_len 0 = no UDP */
static socklen_t udp_peer_len;
static int enabled;                        /* a destination is set */

static void diagnose(const char *what, const char *value, const char *why)
{
    /* A configuration mistake is worth one line on stderr at start-up (the journal, under
     * systemd); nothing is ever printed while the host runs. */
    char buf[PATH_MAX + 256];
    size_t n = 0;
    const char *parts[] = {"sslkeylog: ignoring ", what, "=", value, ": ", why, "\n"};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        size_t len = strlen(parts[i]);
        if (n + len >= sizeof(buf))
            len = sizeof(buf) - 1 - n;
        memcpy(buf + n, parts[i], len);
        n += len;
    }
    ssize_t ignored = write(STDERR_FILENO, buf, n);
    (void)ignored;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    if (IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
        return 1;
    return IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) && sin6->sin6_addr.s6_addr[12] == 127;
}

/* HOST:PORT with HOST an IPv4 literal, or [IPv6]:PORT; an optional udp:// in front (the
 * agent's --keylog-listen syntax).  Returns an explanation when it is not one. */
static const char *parse_udp(const char *value, struct sockaddr_storage *out, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *port_text;
    if (strncmp(value, "udp://", 6) == 0)
        value += 6;
    if (value[0] == '[') {
        const char *end = strchr(value, ']');
        if (end == NULL || end[1] != ':')
            return "expected [IPv6]:PORT";
        if ((size_t)(end - value - 1) >= sizeof(host))
            return "not an IP address";
        memcpy(host, value + 1, (size_t)(end - value - 1));
        host[end - value - 1] = '\0';
        port_text = end + 2;
    } else {
        const char *colon = strrchr(value, ':');
        if (colon == NULL || strchr(value, ':') != colon)
            return "expected HOST:PORT (an IPv6 address goes in brackets: [::1]:PORT)";
        if ((size_t)(colon - value) >= sizeof(host))
            return "not an IP address";
        memcpy(host, value, (size_t)(colon - value));
        host[colon - value] = '\0';
        port_text = colon + 1;
    }
    char *rest;
    errno = 0;
    unsigned long port = strtoul(port_text, &rest, 10);
    if (port_text[0] < '0' || port_text[0] > '9' || *rest != '\0' || errno || port == 0 ||
        port > 65535)
        return "the port must be a number from 1 to 65535";
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*sin6);
    } else {
        return "the host must be an IP address (no names: nothing is resolved)";
    }
    return NULL;
}

__attribute__((constructor)) static void sslkeylog_configure(void)
{
    int saved_errno = errno;
    const char *path = getenv("SSLKEYLOGFILE");
    if (path != NULL && path[0] != '\0') {
        /* Relative to the directory the process started in: daemons chdir("/") later. */
        size_t used = 0;
        if (path[0] != '/') {
            if (getcwd(file_path, sizeof(file_path)) == NULL) {
                diagnose("SSLKEYLOGFILE", path, "relative, and the current directory is unknown");
                file_path[0] = '\0';
                goto udp;
            }
            used = strlen(file_path);
            if (used + 1 < sizeof(file_path) && file_path[used - 1] != '/')
                file_path[used++] = '/';
        }
        if (used + strlen(path) >= sizeof(file_path)) {
            diagnose("SSLKEYLOGFILE", path, "path too long");
            file_path[0] = '\0';
        } else {
            strcpy(file_path + used, path);
        }
    }
udp:;
    const char *udp = getenv("SSLKEYLOG_UDP");
    if (udp != NULL && udp[0] != '\0') {
        const char *why = parse_udp(udp, &udp_peer, &udp_peer_len);
        const char *remote = getenv("SSLKEYLOG_UDP_REMOTE");
        if (why == NULL && !is_loopback(&udp_peer) && !(remote && strcmp(remote, "1") == 0))
            why = "not a loopback address: key-log lines are secrets in transit; set "
                  "SSLKEYLOG_UDP_REMOTE=1 to send them over the network anyway";
        if (why != NULL) {
            diagnose("SSLKEYLOG_UDP", udp, why);
            udp_peer_len = 0;
        }
    }
    enabled = file_path[0] != '\0' || udp_peer_len != 0;
    errno = saved_errno;
}

/* -- delivery: runs inside OpenSSL's handshake, in whichever process and thread ------------ */

/* The UDP socket, kept for the next lines (making one per line costs more than the send).
 * The host may close it (a daemon closing every descriptor after fork) and get the number
 * back for one of its own: the socket's inode, checked before each send, tells; a number
 * that is no longer ours is forgotten, never closed or written to.  Used under a trylock:
 * a line that finds it busy (another thread, or a lock a fork caught held) gets a socket of
 * its own, so no thread ever waits. */
static pthread_mutex_t udp_lock = PTHREAD_MUTEX_INITIALIZER;
static int udp_fd = -1;
static dev_t udp_dev;
static ino_t udp_ino;

static int udp_socket(void)
{
    return socket(udp_peer.ss_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
}

static void udp_send(int fd, const char *buf, size_t len)
{
    ssize_t ignored = sendto(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL,
                             (const struct sockaddr *)&udp_peer, udp_peer_len);
    (void)ignored;
}

static void deliver_udp(const char *buf, size_t len)
{
    struct stat st;
    if (pthread_mutex_trylock(&udp_lock) == 0) {
        if (udp_fd >= 0 && (fstat(udp_fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
                            st.st_dev != udp_dev || st.st_ino != udp_ino))
            udp_fd = -1; /* not ours any more */
        if (udp_fd < 0) {
            int fd = udp_socket();
            if (fd >= 0 && fstat(fd, &st) == 0) {
                udp_fd = fd;
                udp_dev = st.st_dev;
                udp_ino = st.st_ino;
            } else if (fd >= 0) {
                close(fd);
            }
        }
        if (udp_fd >= 0)
            udp_send(udp_fd, buf, len);
        pthread_mutex_unlock(&udp_lock);
        return;
    }
    int fd = udp_socket();
    if (fd >= 0) {
        udp_send(fd, buf, len);
        close(fd);
    }
}

static void deliver(const char *line)
{
    char buf[MAX_LINE];
    size_t len = strnlen(line, MAX_LINE);
    if (len == 0 || len >= MAX_LINE)
        return;
    memcpy(buf, line, len);
    buf[len++] = '\n';
    if (file_path[0] != '\0') {
        /* Opened for this line: O_APPEND makes the write land whole at the end whatever the
         * other processes do, O_CREAT recreates a rotated file, O_NONBLOCK keeps a FIFO
         * without a reader from hanging the handshake. */
        int fd = open(file_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY |
                                     O_NONBLOCK, 0600);
        if (fd >= 0) {
            ssize_t ignored = write(fd, buf, len);
            (void)ignored;
            close(fd);
        }
    }
    if (udp_peer_len != 0)
        deliver_udp(buf, len);
}

/* -- the real OpenSSL functions ------------------------------------------------------------ */

typedef int (*new_index_fn)(int, long, void *, CRYPTO_EX_new *, CRYPTO_EX_dup *,
                            CRYPTO_EX_free *);

static struct {
    SSL_CTX *(*ctx_new)(const SSL_METHOD *);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    SSL_CTX *(*ctx_new_ex)(OSSL_LIB_CTX *, const char *, const SSL_METHOD *);
#endif
    SSL *(*ssl_new)(SSL_CTX *);
    SSL_CTX *(*set_ssl_ctx)(SSL *, SSL_CTX *);
    SSL_CTX *(*get_ssl_ctx)(const SSL *);
    void (*set_keylog)(SSL_CTX *, SSL_CTX_keylog_cb_func);
    SSL_CTX_keylog_cb_func (*get_keylog)(const SSL_CTX *);
    int (*set_ex_data)(SSL_CTX *, int, void *);
    void *(*get_ex_data)(const SSL_CTX *, int);
    new_index_fn new_index;
} real;

static int resolved;          /* read with acquire: set once every pointer above is */
static int host_cb_index = -1; /* SSL_CTX ex_data slot holding the host's own callback */
static pthread_mutex_t resolve_lock = PTHREAD_MUTEX_INITIALIZER;

static int find_libssl(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    const char *name = info->dlpi_name;
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name;
    /* libssl.so.3, libssl.so.1.1 (and never NSS's libssl3.so) */
    if (base != NULL && strncmp(base, "libssl.so", 9) == 0) {
        *(const char **)data = name;
        return 1;
    }
    return 0;
}

static void *symbol(void *scope, const char *name)
{
    return scope == RTLD_NEXT ? dlsym(RTLD_NEXT, name) : dlsym(scope, name);
}

/* Find every real function, in one libssl: the next one in the global scope, else the one
 * loaded locally by a module.  Called from each hook before it forwards, so libssl is there. */
static int resolve(void)
{
    if (__atomic_load_n(&resolved, __ATOMIC_ACQUIRE))
        return 1;
    pthread_mutex_lock(&resolve_lock);
    if (!resolved) {
        void *scope = RTLD_NEXT;
        if (dlsym(RTLD_NEXT, "SSL_CTX_new") == NULL) {
            const char *libssl = NULL;
            dl_iterate_phdr(find_libssl, &libssl);
            /* RTLD_NOLOAD: only a libssl that is already there; the reference is kept, so
             * the pointers stay valid for the life of the process. */
            scope = libssl ? dlopen(libssl, RTLD_LAZY | RTLD_NOLOAD) : NULL;
        }
        if (scope != NULL) {
            *(void **)&real.ctx_new = symbol(scope, "SSL_CTX_new");
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
            *(void **)&real.ctx_new_ex = symbol(scope, "SSL_CTX_new_ex"); /* NULL on 1.1.1 */
#endif
            *(void **)&real.ssl_new = symbol(scope, "SSL_new");
            *(void **)&real.set_ssl_ctx = symbol(scope, "SSL_set_SSL_CTX");
            *(void **)&real.get_ssl_ctx = symbol(scope, "SSL_get_SSL_CTX");
            *(void **)&real.set_keylog = symbol(scope, "SSL_CTX_set_keylog_callback");
            *(void **)&real.get_keylog = symbol(scope, "SSL_CTX_get_keylog_callback");
            *(void **)&real.set_ex_data = symbol(scope, "SSL_CTX_set_ex_data");
            *(void **)&real.get_ex_data = symbol(scope, "SSL_CTX_get_ex_data");
            *(void **)&real.new_index = symbol(scope, "CRYPTO_get_ex_new_index");
        }
        if (real.ctx_new && real.ssl_new && real.set_ssl_ctx && real.get_ssl_ctx &&
            real.set_keylog && real.get_keylog && real.set_ex_data && real.get_ex_data &&
            real.new_index) {
            /* The slot for a host's own callback.  Asked for only now, when the host is
             * already using OpenSSL: a call into OpenSSL before the host's first one could
             * spoil its set-up (CRYPTO_set_mem_functions must come before any allocation). */
            if (enabled)
                host_cb_index = real.new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, NULL, NULL, NULL,
                                               NULL);
            __atomic_store_n(&resolved, 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&resolve_lock);
    return resolved;
}

/* -- the callback and its registration ----------------------------------------------------- */

static void sslkeylog_line(const SSL *ssl, const char *line)
{
    int saved_errno = errno;
    SSL_CTX_keylog_cb_func host_cb = NULL;
    if (line != NULL)
        deliver(line);
    if (ssl != NULL && host_cb_index >= 0) {
        SSL_CTX *ctx = real.get_ssl_ctx(ssl);
        if (ctx != NULL)
            *(void **)&host_cb = real.get_ex_data(ctx, host_cb_index);
    }
    errno = saved_errno;
    if (host_cb != NULL)
        host_cb(ssl, line);
}

/* Make ctx call ours, keeping whatever callback it had as the host's. */
static void adopt(SSL_CTX *ctx)
{
    if (!enabled || ctx == NULL || !resolve())
        return;
    SSL_CTX_keylog_cb_func current = real.get_keylog(ctx);
    if (current == sslkeylog_line)
        return;
    if (current != NULL) {
        /* A callback we did not see being set: keep it, or, if it cannot be kept, leave it
         * alone (the host's own logging comes first). */
        if (host_cb_index < 0 || !real.set_ex_data(ctx, host_cb_index, *(void **)&current))
            return;
    }
    real.set_keylog(ctx, sslkeylog_line);
}

EXPORT SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
{
    if (!resolve())
        return NULL;
    SSL_CTX *ctx = real.ctx_new(method);
    adopt(ctx);
    return ctx;
}

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
EXPORT SSL_CTX *SSL_CTX_new_ex(OSSL_LIB_CTX *libctx, const char *propq,
                               const SSL_METHOD *method)
{
    if (!resolve() || real.ctx_new_ex == NULL)
        return NULL;
    SSL_CTX *ctx = real.ctx_new_ex(libctx, propq, method);
    adopt(ctx);
    return ctx;
}
#endif

EXPORT SSL *SSL_new(SSL_CTX *ctx)
{
    if (!resolve())
        return NULL;
    adopt(ctx); /* a context made where we could not see it */
    return real.ssl_new(ctx);
}

EXPORT SSL_CTX *SSL_set_SSL_CTX(SSL *ssl, SSL_CTX *ctx)
{
    if (!resolve())
        return NULL;
    adopt(ctx); /* SNI switches a connection to another context */
    return real.set_ssl_ctx(ssl, ctx);
}

EXPORT void SSL_CTX_set_keylog_callback(SSL_CTX *ctx, SSL_CTX_keylog_cb_func cb)
{
    if (!resolve())
        return;
    if (enabled && ctx != NULL && host_cb_index >= 0 && cb != sslkeylog_line &&
        real.set_ex_data(ctx, host_cb_index, *(void **)&cb)) {
        real.set_keylog(ctx, sslkeylog_line); /* the host's is called from ours */
        return;
    }
    real.set_keylog(ctx, cb);
}

EXPORT SSL_CTX_keylog_cb_func SSL_CTX_get_keylog_callback(const SSL_CTX *ctx)
{
    if (!resolve())
        return NULL;
    SSL_CTX_keylog_cb_func cb = real.get_keylog(ctx);
    if (cb == sslkeylog_line) {
        cb = NULL;
        if (host_cb_index >= 0)
            *(void **)&cb = real.get_ex_data(ctx, host_cb_index);
    }
    return cb;
}
