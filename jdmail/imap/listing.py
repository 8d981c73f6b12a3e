"""LIST and LSUB: wildcard matching and the LIST-EXTENDED (RFC 5258) arguments.

Twisted turns a LIST pattern into a regular expression; a pattern with many
wildcards then backtracks exponentially and hangs the whole process. Here a
pattern is run as a small NFA over the name: time is at most
len(name) * len(pattern), and patterns are capped at MAX_PATTERN characters.
"""

from jdmail.imap.parser import Atom, ParseError

__all__ = ["MAX_PATTERN", "compile_pattern", "combine", "parse_list_args", "ListRequest"]

MAX_PATTERN = 1024
DELIMITER = "/"


def _collapse(pattern):
    """Merge runs of wildcards: any run holding '*' is '*', a run of '%' is '%'."""
    out = []
    run = ""
    for c in pattern:
        if c in "*%":
            run += c
            continue
        if run:
            out.append("*" if "*" in run else "%")
            run = ""
        out.append(c)
    if run:
        out.append("*" if "*" in run else "%")
    return "".join(out)


class Pattern:
    """A compiled LIST pattern: ``*`` matches anything, ``%`` anything but "/"."""

    def __init__(self, pattern):
        if len(pattern) > MAX_PATTERN:
            raise ParseError("Mailbox pattern too long")
        self.text = pattern
        self.p = _collapse(pattern)
        self.has_wildcards = "*" in self.p or "%" in self.p
        self._start = self._closure({0})
        # an INBOX pattern matches case-insensitively at the start
        head = self.p[:5]
        self._inbox = head.upper() == "INBOX" and head != "INBOX" and (len(self.p) == 5 or self.p[5] in "/*%")

    def _closure(self, states):
        p = self.p
        stack = list(states)
        out = set(states)
        while stack:
            i = stack.pop()
            if i < len(p) and p[i] in "*%" and i + 1 not in out:
                out.add(i + 1)
                stack.append(i + 1)
        return out

    def _run(self, p, name):
        states = self._start
        end = len(p)
        for ch in name:
            new = set()
            for i in states:
                if i >= end:
                    continue
                c = p[i]
                if c == "*":
                    new.add(i)
                elif c == "%":
                    if ch != DELIMITER:
                        new.add(i)
                elif c == ch:
                    new.add(i + 1)
            if not new:
                return False
            states = self._closure(new)
        return end in states

    def match(self, name):
        if self._run(self.p, name):
            return True
        if self._inbox and (name == "INBOX" or name.startswith("INBOX/")):
            return self._run("INBOX" + self.p[5:], name)
        return False

    def could_contain_children_of(self, name):
        """Whether some name below ``name`` could match (for \\Noselect parents with %)."""
        return self.match(name + DELIMITER + "x") or self.match(name + DELIMITER)


def compile_pattern(pattern):
    return Pattern(pattern)


def combine(reference, pattern):
    """The canonical form of reference + pattern (RFC 3501 6.3.8)."""
    if not reference:
        return pattern
    if pattern.startswith(DELIMITER):
        return pattern
    if reference.endswith(DELIMITER):
        return reference + pattern
    return reference + DELIMITER + pattern


class ListRequest:
    """A parsed LIST command."""

    def __init__(self):
        self.extended = False
        self.select_subscribed = False
        self.select_special_use = False
        self.recursive = False
        self.return_subscribed = False
        self.return_children = False
        self.return_special_use = False
        self.status_items = None
        self.reference = b""
        self.patterns = []


def parse_list_args(args):
    """LIST [(selection-options)] reference (pattern | (patterns)) [RETURN (options)].
    Raises ParseError. Reference and patterns stay raw tokens (decoded by the caller)."""
    req = ListRequest()
    args = list(args)
    if args and isinstance(args[0], list):
        req.extended = True
        for opt in args.pop(0):
            if not isinstance(opt, Atom):
                raise ParseError("Invalid LIST selection option")
            o = opt.upper()
            if o == "SUBSCRIBED":
                req.select_subscribed = True
            elif o == "SPECIAL-USE":
                req.select_special_use = True
            elif o == "RECURSIVEMATCH":
                req.recursive = True
            elif o == "REMOTE":
                pass
            else:
                raise ParseError("Unknown LIST selection option %s" % o)
        if req.recursive and not req.select_subscribed:
            raise ParseError("RECURSIVEMATCH needs another selection option")
    if len(args) < 2:
        raise ParseError("LIST needs a reference and a mailbox pattern")
    req.reference = args.pop(0)
    if isinstance(req.reference, list):
        raise ParseError("Invalid LIST reference")
    patterns = args.pop(0)
    if isinstance(patterns, list):
        req.extended = True
        if not patterns:
            raise ParseError("Empty pattern list")
        for p in patterns:
            if isinstance(p, list):
                raise ParseError("Invalid mailbox pattern")
        req.patterns = patterns
    else:
        req.patterns = [patterns]
    if args:
        if len(args) != 2 or not isinstance(args[0], Atom) or args[0].upper() != "RETURN" \
                or not isinstance(args[1], list):
            raise ParseError("Expected RETURN (options) after the LIST pattern")
        req.extended = True
        opts = list(args[1])
        while opts:
            opt = opts.pop(0)
            if not isinstance(opt, Atom):
                raise ParseError("Invalid LIST return option")
            o = opt.upper()
            if o == "SUBSCRIBED":
                req.return_subscribed = True
            elif o == "CHILDREN":
                req.return_children = True
            elif o == "SPECIAL-USE":
                req.return_special_use = True
            elif o == "STATUS":
                if not opts or not isinstance(opts[0], list):
                    raise ParseError("STATUS needs a list of status items")
                req.status_items = opts.pop(0)
            else:
                raise ParseError("Unknown LIST return option %s" % o)
    return req
