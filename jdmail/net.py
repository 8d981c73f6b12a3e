"""Small helpers every protocol needs on a new connection."""


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
