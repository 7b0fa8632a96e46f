"""A small serial terminal on a board's TCP port, for `rmkit repl` (Ctrl-] quits).

The unix port prints bare "\\n" where an ESP32 prints "\\r\\n"; the local terminal keeps output
processing on (unlike mpremote's raw mode), so lines still start at the left edge.
"""

import os
import select
import socket
import sys
import termios
import tty

QUIT = 0x1D  # Ctrl-]


def run_terminal(port: int, label: str) -> int:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as exc:
        print(f"rmkit repl: cannot connect to {label}: {exc.strerror}", file=sys.stderr)
        return 1
    stdin = sys.stdin.fileno()
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    try:
        if is_tty:
            # TCSANOW, not setraw's default TCSAFLUSH: what was typed (or pasted) before this moment is kept
            tty.setraw(stdin, termios.TCSANOW)
            attrs = termios.tcgetattr(stdin)
            attrs[1] |= termios.OPOST | termios.ONLCR
            termios.tcsetattr(stdin, termios.TCSANOW, attrs)
        print(f"Connected to {label}. Ctrl-] quits; Ctrl-C/Ctrl-D/Ctrl-E go to the board.", flush=True)
        sock.setblocking(False)
        while True:
            ready, _, _ = select.select([sock, stdin], [], [])
            if sock in ready:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    print("\r\n[board closed the connection]", flush=True)
                    return 0
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data or QUIT in data:
                    return 0
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
        print("", flush=True)
