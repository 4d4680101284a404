"""The plainest HTTP source of a file: the reference that downloads are compared with.

    python bench/refsource.py sendfile|readwrite DIR

Listens on 127.0.0.1 (a free port, printed on stdout), answers every GET /NAME with
the file DIR/NAME, one thread per connection, ``Connection: close``. ``sendfile``
moves the file with os.sendfile; ``readwrite`` reads 1 MiB at a time into one buffer
and sends it with sendall.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CHUNK = 1 << 20


def serve(conn: socket.socket, mode: str, root: str) -> None:
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            data = conn.recv(65536)
            if not data:
                return
            request += data
        name = os.path.basename(request.split(b" ", 2)[1].decode())
        with open(os.path.join(root, name), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size)
            if mode == "sendfile":
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
            else:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while n := f.readinto(buf):
                    conn.sendall(view[:n])


def main() -> None:
    mode, root = sys.argv[1], sys.argv[2]
    assert mode in ("sendfile", "readwrite"), mode
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, mode, root), daemon=True).start()


if __name__ == "__main__":
    main()
