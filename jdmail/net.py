"""Small helpers every protocol needs on a new connection."""

from twisted.internet import tcp


def peer_host(transport):
    """The client's address as a string ('?' when the transport has none)."""
    try:
        return transport.getPeer().host
    except Exception:
        return "?"


def set_nodelay(transport):
    """Turn Nagle off where the transport allows it: replies are whole and small,
    and Nagle + delayed ACK costs ~40 ms per reply (DESIGN.md)."""
    nodelay = getattr(transport, "setTcpNoDelay", None)
    if nodelay is not None:
        try:
            nodelay(True)
        except Exception:
            pass


def write_now(transport, data):
    """``transport.write(data)``, but when a plain TCP transport has nothing buffered
    the octets go to the socket at once.

    Twisted's write() buffers, registers the socket for writability and sends on the
    next reactor turn, then unregisters it: two epoll_ctl calls and a loop turn per
    reply, a large part of a short command's cost. Whatever the kernel does not
    take now (a full socket buffer, an error) is handed to ``transport.write``,
    which buffers it and reports errors as usual; TLS and other transports always
    take the ordinary path."""
    if (type(transport) is tcp.Server and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport._tempDataLen and transport.offset >= len(transport.dataBuffer)):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)
