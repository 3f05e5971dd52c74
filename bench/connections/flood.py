#!/usr/bin/env python3
"""Opens and closes TLS connections to 127.0.0.1:PORT as fast as THREADS
threads can for SECONDS, from the loopback source addresses given (comma
separated, taken in turn by the threads); prints
`handshakes REFUSED/FAILED` on one line."""
import socket
import ssl
import sys
import threading
import time

port, sources, seconds = int(sys.argv[1]), sys.argv[2].split(","), float(sys.argv[3])
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 8
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
counts = {"ok": 0, "refused": 0}
lock = threading.Lock()


def flood(i):
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        # Each connection from its own source address in turn.
        source = sources[(i + n * threads) % len(sources)]
        n += 1
        try:
            raw = socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=2)
            context.wrap_socket(raw).close()
            key = "ok"
        except OSError:
            key = "refused"
        with lock:
            counts[key] += 1


workers = [threading.Thread(target=flood, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(counts["ok"], counts["refused"])
