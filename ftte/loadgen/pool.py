"""Many paho clients driven from one thread by one ``selectors`` loop.

paho's ``loop_start`` gives every client a network thread (and a socket pair to wake it):
thousands of them cost thousands of threads and file descriptors, and the GIL makes them
take turns anyway. paho also supports an external event loop (its ``loop_asyncio``
example): it reports its socket through ``on_socket_open``/``on_socket_close``, asks for
write readiness through ``on_socket_register_write``/``on_socket_unregister_write``, and
the owner calls ``loop_read``/``loop_write`` when the socket is ready and ``loop_misc``
about once a second (keep-alive). This pool is that owner for every client at once, with
one epoll selector: one file descriptor per session, one thread for all of them.

Two things paho's own loop does that an external loop must do too: a TLS socket can hold
decrypted bytes that ``select`` does not see (``SSLSocket.pending``), so reading goes on
while any are pending; and paho never reconnects outside ``loop_forever``, so the owner
calls ``reconnect`` itself.
"""

from __future__ import annotations

import selectors
import ssl
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

if TYPE_CHECKING:  # paho defines it for type checkers only
    from paho.mqtt.client import SocketLike

MISC_INTERVAL_S = 1.0  # keep-alive bookkeeping; the broker's keep-alive is tens of seconds


class SessionPool:
    """Registers paho clients' sockets with one selector and serves their network events."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._last_misc = 0.0

    def add(self, client: mqtt.Client) -> None:
        """Hand ``client``'s socket events to this pool (before it connects)."""
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._written

    def sessions(self) -> int:
        """Clients whose socket is open now."""
        return len(self._selector.get_map())

    def serve(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for network events and handle them; return how many."""
        if not self._selector.get_map():  # epoll would return at once: nothing to watch
            time.sleep(timeout_s)
            return 0
        events = self._selector.select(timeout_s)
        for key, mask in events:
            client: mqtt.Client = key.data
            sock = key.fileobj
            if mask & selectors.EVENT_READ:
                client.loop_read()
                # Decrypted bytes already read off the wire: select will not report them.
                while client.socket() is sock and isinstance(sock, ssl.SSLSocket):
                    if sock.pending() <= 0:
                        break
                    client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is sock:
                client.loop_write()
        now = time.monotonic()
        if now - self._last_misc >= MISC_INTERVAL_S:
            self._last_misc = now
            for key in list(self._selector.get_map().values()):
                key.data.loop_misc()
        return len(events)

    def close(self) -> None:
        """Stop watching every socket (the clients are disconnected by their owners)."""
        self._selector.close()

    # paho's socket callbacks: (client, userdata, socket)

    def _opened(self, client: mqtt.Client, _userdata: Any, sock: SocketLike) -> None:
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _closed(self, _client: mqtt.Client, _userdata: Any, sock: SocketLike) -> None:
        # paho reports the close before closing the socket, so it can still be looked up.
        if self._registered(sock):
            self._selector.unregister(sock)

    def _want_write(self, client: mqtt.Client, _userdata: Any, sock: SocketLike) -> None:
        if self._registered(sock):
            self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _written(self, client: mqtt.Client, _userdata: Any, sock: SocketLike) -> None:
        if self._registered(sock):
            self._selector.modify(sock, selectors.EVENT_READ, client)

    def _registered(self, sock: SocketLike) -> bool:
        try:
            self._selector.get_key(sock)
        except (KeyError, ValueError):  # ValueError: the socket is closed already
            return False
        return True
