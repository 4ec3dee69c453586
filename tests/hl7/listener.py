#!/usr/bin/env python3
"""An independent HL7 v2 receiver for the connector's tests: an MLLP listener that parses every message
with hl7apy (a third-party HL7 v2 library) at strict validation for the configured version, and answers
as an integration engine would.

    listener.py --version 2.5.1 --record FILE [--reject-file FILE] [--mode-file FILE] [--port N]
                [--tls-cert FILE --tls-key FILE]

- With --tls-cert and --tls-key (PEM), MLLP over TLS (Python's ssl module): the connector's mllps://.
- Prints "LISTENING <port>" on stdout once bound (port 0: any free port), then serves until killed.
- Every frame received (0x0b ... 0x1c 0x0d) is appended to --record as one JSON line:
  {"control_id", "type", "pid3", "valid", "error", "answer", "raw"}.
- A message that fails strict parsing or structure validation is answered AE with an ERR segment.
- A message whose control id (MSH-10) or PID-3 identifier is a line of --reject-file is answered AE with an
  ERR segment naming that rule (a configured rejection, as an engine's business rule would).
- --mode-file, read for every message: "ack" (default), "silent" (never answer; the connection stays
  open), "reset" (close the connection at once, without answering); "silent-once" and "reset-once" do that
  to one message and then go back to "ack"; "every reset=N silent=M" resets at every Nth message received
  and stays silent at every Mth (counting all messages, retries included). The test changes it while
  running.
"""

import argparse
import datetime
import json
import os
import socketserver
import ssl
import sys
import threading

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

START, END = b"\x0b", b"\x1c\x0d"
LOCK = threading.Lock()


def read_lines(path):
    if not path or not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def mode(path):
    if not path or not os.path.exists(path):
        return "ack"
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or "ack"


def fields(raw):
    """MSH-9, MSH-10, MSH-12 and PID-3's first identifier, read plainly (for the record and the ACK),
    whether or not hl7apy accepts the message."""
    out = {"type": "", "control_id": "", "version": "", "pid3": ""}
    for seg in raw.split("\r"):
        parts = seg.split("|")
        if parts[0] == "MSH" and len(parts) > 11:
            out.update(type=parts[8], control_id=parts[9], version=parts[11])
        elif parts[0] == "PID" and len(parts) > 3:
            out["pid3"] = parts[3].split("~")[0].split("^")[0]
    return out


def check(raw, version):
    """None when hl7apy parses the message strictly and finds its structure valid; else the reason."""
    try:
        msg = parse_message(raw, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        if msg.version != version:
            return f"version {msg.version}, expected {version}"
        msg.validate()
        return None
    except Exception as e:  # hl7apy raises many kinds; every one is a refusal
        return f"{type(e).__name__}: {e}"


def escape(text):
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    return out.replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ").replace("\n", " ")


def ack(f, code, version, error=None):
    now = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    trigger = f["type"].split("^")[1] if "^" in f["type"] else ""
    segs = [
        f"MSH|^~\\&|ENGINE|TRUST|CONNECTOR|HUB|{now}||ACK^{trigger}^ACK|ACK{f['control_id']}|P|{version}",
        f"MSA|{code}|{f['control_id']}",
    ]
    if error:
        segs.append(f"ERR|||207^Application internal error^HL70357|E||||{escape(error)[:200]}")
    return ("\r".join(segs) + "\r").encode("utf-8")


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        buf = b""
        while True:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            buf += chunk
            while END in buf:
                frame, buf = buf.split(END, 1)
                start = frame.find(START)
                raw = frame[start + 1 :].decode("utf-8", errors="replace") if start >= 0 else ""
                if not self.answer(raw.rstrip("\r")):
                    return

    def answer(self, raw):
        s = self.server
        f = fields(raw)
        invalid = check(raw, s.version)
        error = invalid
        if error is None:
            rejected = read_lines(s.reject_file)
            if f["control_id"] in rejected or (f["pid3"] and f["pid3"] in rejected):
                error = "Refused by the engine's rule for this record (test rejection)"
        with LOCK:
            s.count += 1
            m = mode(s.mode_file)
            if m.startswith("every "):
                every = dict(kv.split("=", 1) for kv in m.split()[1:])
                hits = [f for f in ("silent", "reset") if f in every and s.count % int(every[f]) == 0]
                m = hits[0] if hits else "ack"
            if m.endswith("-once"):
                m = m[: -len("-once")]
                with open(s.mode_file, "w", encoding="utf-8") as out:
                    out.write("ack\n")
        answer = "none" if m in ("silent", "reset") else ("AE" if error else "AA")
        with LOCK, open(s.record, "a", encoding="utf-8") as out:
            row = dict(f, valid=invalid is None, error=error, answer=answer, raw=raw)
            out.write(json.dumps(row) + "\n")
        if m == "reset":
            return False
        if m == "silent":
            return True
        self.request.sendall(START + ack(f, answer, s.version, error) + END)
        return True


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--version", default="2.5.1")
    p.add_argument("--record", required=True)
    p.add_argument("--reject-file")
    p.add_argument("--mode-file")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    a = p.parse_args()
    server = Server(("127.0.0.1", a.port), Handler)
    if a.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(a.tls_cert, a.tls_key)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.version, server.record = a.version, a.record
    server.reject_file, server.mode_file = a.reject_file, a.mode_file
    server.count = 0
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
