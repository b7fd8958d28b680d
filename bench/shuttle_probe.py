"""The two ends of the Shuttle channel benchmark (bench.py `compare_shuttle`), run inside VMs
with the host's /usr/bin/python3.

    shuttle_probe.py serve UNIX_PATH TCP_PORT   # the target: a unix socket and a loopback port
    shuttle_probe.py bulk ADDRESS MIB           # send MIB MiB, wait for the count; prints the
                                                # seconds, and the CPU seconds of client and server
    shuttle_probe.py pull ADDRESS MIB           # receive MIB MiB; prints seconds
    shuttle_probe.py ping ADDRESS COUNT         # COUNT 64-byte round trips; prints µs per trip

ADDRESS is unix:/PATH or tcp:PORT (on 127.0.0.1). The first byte a client sends says what it
wants: B (bulk in), D (bulk out, 8-byte size follows) or P (ping-pong).
"""

import os
import socket
import struct
import sys
import threading
import time

CHUNK = 1 << 20


def connect(address: str) -> socket.socket:
    kind, where = address.split(":", 1)
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(where)
    else:
        s = socket.create_connection(("127.0.0.1", int(where)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = s.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def handle(s: socket.socket) -> None:
    with s:
        mode = s.recv(1)
        if mode == b"B":
            buffer = bytearray(CHUNK)
            total = 0
            cpu = time.thread_time()
            while True:
                n = s.recv_into(buffer)
                if n == 0:
                    break
                total += n
            s.sendall(struct.pack("!Qd", total, time.thread_time() - cpu))
        elif mode == b"D":
            size = bytearray(8)
            recv_exactly(s, memoryview(size))
            left = struct.unpack("!Q", size)[0]
            block = memoryview(bytes(CHUNK))
            while left:
                n = min(left, CHUNK)
                s.sendall(block[:n])
                left -= n
        elif mode == b"P":
            message = memoryview(bytearray(64))
            while recv_exactly(s, message):
                s.sendall(message)


def serve(unix_path: str, port: int) -> None:
    listeners = []
    os.makedirs(os.path.dirname(unix_path), exist_ok=True)
    if os.path.exists(unix_path):
        os.unlink(unix_path)
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.bind(unix_path)
    # Listening at once: the socket file's presence is what the bench waits for.
    u.listen(64)
    listeners.append(u)
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", port))
    t.listen(64)
    listeners.append(t)

    def accept(listener: socket.socket) -> None:
        while True:
            s, _ = listener.accept()
            if s.family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handle, args=(s,), daemon=True).start()

    for listener in listeners[1:]:
        threading.Thread(target=accept, args=(listener,), daemon=True).start()
    accept(listeners[0])


def bulk(address: str, mib: int) -> tuple[float, float, float]:
    block = memoryview(bytes(CHUNK))
    s = connect(address)
    cpu = time.process_time()
    started = time.perf_counter()
    s.sendall(b"B")
    for _ in range(mib):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    answer = bytearray(16)
    recv_exactly(s, memoryview(answer))
    elapsed = time.perf_counter() - started
    count, server_cpu = struct.unpack("!Qd", answer)
    assert count == mib * CHUNK, "the server got every byte"
    return elapsed, time.process_time() - cpu, server_cpu


def pull(address: str, mib: int) -> float:
    s = connect(address)
    buffer = bytearray(CHUNK)
    started = time.perf_counter()
    s.sendall(b"D" + struct.pack("!Q", mib * CHUNK))
    total = 0
    while True:
        n = s.recv_into(buffer)
        if n == 0:
            break
        total += n
    elapsed = time.perf_counter() - started
    assert total == mib * CHUNK, "every byte came"
    return elapsed


def ping(address: str, count: int) -> list[float]:
    s = connect(address)
    s.sendall(b"P")
    message = memoryview(bytearray(64))
    trips = []
    for _ in range(count):
        started = time.perf_counter()
        s.sendall(message)
        recv_exactly(s, message)
        trips.append((time.perf_counter() - started) * 1e6)
    return trips


def main() -> None:
    what = sys.argv[1]
    if what == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif what == "bulk":
        print(" ".join(f"{value:.6f}" for value in bulk(sys.argv[2], int(sys.argv[3]))))
    elif what == "pull":
        print(f"{pull(sys.argv[2], int(sys.argv[3])):.6f}")
    elif what == "ping":
        trips = sorted(ping(sys.argv[2], int(sys.argv[3])))
        print(f"{trips[len(trips) // 2]:.2f} {trips[int(len(trips) * 0.99)]:.2f}")


if __name__ == "__main__":
    main()
