#!/usr/bin/env python3
"""A client of the course's JSON socket protocol, standard library only, in the style of the
course's client (the realpython "python-sockets" libclient: a Message object driven by a
selector, a 2-byte header length, a JSON header, the content).

Usage: compat_client.py HOST PORT [TTL_SECONDS]

Registers an instance, heartbeats it, finds it by a query, checks a few refusals, waits out
the TTL (default 1 s) and checks that the instance is gone: the query is empty and a
heartbeat answers NOT FOUND. Every answer's header must be byte for byte what Python's
json.dumps writes. Exits 0 when every answer is as expected, 1 (with the reason on stderr)
at the first that is not.
"""

import io
import json
import os
import selectors
import socket
import struct
import sys
import time
import uuid

TIMEOUT = 5.0
HEADER_KEYS = ("byteorder", "content-length", "content-type", "content-encoding")


class Mismatch(Exception):
    pass


class Message:
    """One request and its answer over one connection, as the course's client does it."""

    def __init__(self, selector, sock, request, piece=None):
        self.selector = selector
        self.sock = sock
        self.request = request
        # When set, the request is sent `piece` bytes at a time, to show that the server
        # collects a message that arrives in several reads.
        self.piece = piece
        self._recv_buffer = b""
        self._send_buffer = b""
        self._request_queued = False
        self._jsonheader_len = None
        self.raw_jsonheader = None
        self.jsonheader = None
        self.response = None
        self.done = False

    def _set_selector_events_mask(self, mode):
        events = {"r": selectors.EVENT_READ, "w": selectors.EVENT_WRITE}[mode]
        self.selector.modify(self.sock, events, data=self)

    def _read(self):
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        if not data:
            raise Mismatch("the server closed the connection without a whole answer")
        self._recv_buffer += data

    def _write(self):
        if not self._send_buffer:
            return
        chunk = self._send_buffer if self.piece is None else self._send_buffer[: self.piece]
        try:
            sent = self.sock.send(chunk)
        except BlockingIOError:
            return
        self._send_buffer = self._send_buffer[sent:]
        if self.piece is not None:
            time.sleep(0.01)

    @staticmethod
    def _json_encode(obj, encoding):
        return json.dumps(obj, ensure_ascii=False).encode(encoding)

    @staticmethod
    def _json_decode(json_bytes, encoding):
        wrapper = io.TextIOWrapper(io.BytesIO(json_bytes), encoding=encoding, newline="")
        obj = json.load(wrapper)
        wrapper.close()
        return obj

    def _create_message(self, content_bytes, content_type, content_encoding):
        jsonheader = {
            "byteorder": sys.byteorder,
            "content-type": content_type,
            "content-encoding": content_encoding,
            "content-length": len(content_bytes),
        }
        jsonheader_bytes = self._json_encode(jsonheader, "utf-8")
        return struct.pack(">H", len(jsonheader_bytes)) + jsonheader_bytes + content_bytes

    def process_events(self, mask):
        if mask & selectors.EVENT_READ:
            self.read()
        if mask & selectors.EVENT_WRITE:
            self.write()

    def read(self):
        self._read()
        if self._jsonheader_len is None:
            self.process_protoheader()
        if self._jsonheader_len is not None and self.jsonheader is None:
            self.process_jsonheader()
        if self.jsonheader is not None and self.response is None:
            self.process_response()

    def write(self):
        if not self._request_queued:
            self.queue_request()
        self._write()
        if self._request_queued and not self._send_buffer:
            self._set_selector_events_mask("r")

    def queue_request(self):
        content_bytes = self._json_encode(self.request, "utf-8")
        self._send_buffer += self._create_message(content_bytes, "text/json", "utf-8")
        self._request_queued = True

    def process_protoheader(self):
        if len(self._recv_buffer) >= 2:
            self._jsonheader_len = struct.unpack(">H", self._recv_buffer[:2])[0]
            self._recv_buffer = self._recv_buffer[2:]

    def process_jsonheader(self):
        length = self._jsonheader_len
        if len(self._recv_buffer) >= length:
            self.raw_jsonheader = self._recv_buffer[:length]
            self.jsonheader = self._json_decode(self.raw_jsonheader, "utf-8")
            self._recv_buffer = self._recv_buffer[length:]
            for key in HEADER_KEYS:
                if key not in self.jsonheader:
                    raise Mismatch(f"the answer's header has no {key!r}")

    def process_response(self):
        length = self.jsonheader["content-length"]
        if len(self._recv_buffer) < length:
            return
        data = self._recv_buffer[:length]
        self._recv_buffer = self._recv_buffer[length:]
        if self.jsonheader["content-type"] == "text/json":
            self.response = self._json_decode(data, self.jsonheader["content-encoding"])
        else:
            self.response = data
        self.done = True


def call(host, port, request, piece=None):
    """Sends one request on a new connection; returns (content type, answer)."""
    selector = selectors.DefaultSelector()
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    sock.setblocking(False)
    message = Message(selector, sock, request, piece)
    selector.register(sock, selectors.EVENT_WRITE, data=message)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not message.done:
            if time.monotonic() > deadline:
                raise Mismatch(f"no answer to {request} within {TIMEOUT} s")
            for key, mask in selector.select(timeout=0.1):
                key.data.process_events(mask)
        # The server closes the connection once it has answered.
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        if sock.recv(1) != b"":
            raise Mismatch("the server sent more than one answer")
    finally:
        selector.unregister(sock)
        sock.close()
        selector.close()

    content_type = message.jsonheader["content-type"]
    expected_header = json.dumps(
        {
            "byteorder": "little",
            "content-type": content_type,
            "content-encoding": "utf-8",
            "content-length": message.jsonheader["content-length"],
        }
    ).encode("utf-8")
    if message.raw_jsonheader != expected_header:
        raise Mismatch(f"header {message.raw_jsonheader!r}, expected {expected_header!r}")
    return content_type, message.response


def expect(what, got, expected):
    if got != expected:
        raise Mismatch(f"{what}: got {got!r}, expected {expected!r}")


def plain(host, port, request, piece=None):
    content_type, answer = call(host, port, request, piece)
    expect(f"content-type of the answer to {request}", content_type, "text/plain")
    return answer.decode("utf-8")


def listed(host, port, service_type):
    content_type, answer = call(host, port, {"action": "query", "type": service_type})
    expect("content-type of a query answer", content_type, "text/json")
    if not isinstance(answer, str):
        raise Mismatch(f"a query answer must be a JSON string, got {answer!r}")
    return json.loads(answer)


def run(host, port, ttl):
    service_type = f"hive-{os.getpid()}"
    me = {"ip": "127.0.0.1", "port": 65433}

    expect("query before register", listed(host, port, service_type), [])
    registration = {"action": "register", "type": service_type, **me}
    registered = plain(host, port, registration)
    expect("length of the register answer", len(registered), 36)
    expect("register answer", str(uuid.UUID(registered)), registered)

    heartbeat = {"action": "heartbeat", "uuid": registered}
    expect("heartbeat", plain(host, port, heartbeat), "OK")
    expect("heartbeat sent in 5-byte pieces", plain(host, port, heartbeat, piece=5), "OK")
    expect("query", listed(host, port, service_type), [me])

    stranger = {"action": "heartbeat", "uuid": str(uuid.uuid4())}
    expect("heartbeat of an unknown uuid", plain(host, port, stranger), "NOT FOUND")
    for bad in (
        {**registration, "port": "80"},
        {**registration, "port": 66554},
        {**registration, "ip": "not-an-ip"},
        {"action": "dance", "type": service_type},
        {"action": "query"},
    ):
        expect(f"answer to {bad}", plain(host, port, bad), "ERROR")

    time.sleep(ttl + 0.5)
    expect("query after the TTL", listed(host, port, service_type), [])
    expect("heartbeat after the TTL", plain(host, port, heartbeat), "NOT FOUND")


def main():
    if len(sys.argv) not in (3, 4):
        print("usage: compat_client.py HOST PORT [TTL_SECONDS]", file=sys.stderr)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    ttl = float(sys.argv[3]) if len(sys.argv) == 4 else 1.0
    try:
        run(host, port, ttl)
    except Mismatch as mismatch:
        print(f"compat_client: {mismatch}", file=sys.stderr)
        return 1
    print("compat_client: every answer as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
