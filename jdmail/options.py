"""Typed INI options: every key a component accepts is declared as an Option.

An Option turns the INI text into a Python value or raises ValueError with a
sentence saying what is allowed; config.py adds the file, section and key.
"""

import builtins
import re

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2,
               "g": 1024**3, "gb": 1024**3}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text):
    """'25M' -> 26214400. Units: none/B, K, M, G (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r}: expected a size such as 512K, 25M or 1G")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_duration(text):
    """'30s' -> 30.0. A unit is required: ms, s, m, h or d."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", text)
    if not m:
        raise ValueError(f"{text!r}: expected a duration with a unit, such as 500ms, 30s, 5m, 1h or 2d")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_bool(text):
    """yes/no (also true/false, on/off, 1/0)."""
    low = text.strip().lower()
    if low in ("yes", "true", "on", "1"):
        return True
    if low in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{text!r}: expected yes or no")


def parse_int(text):
    """A whole number >= 0."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: expected a whole number") from None
    if value < 0:
        raise ValueError(f"{text!r}: expected a whole number of 0 or more")
    return value


def parse_float(text):
    """A number >= 0 such as 5 or 6.5."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: expected a number such as 5 or 6.5") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r}: expected a number of 0 or more")
    return value


def parse_workers(text):
    """'auto' or a whole number >= 1 (processes)."""
    low = text.strip().lower()
    if low == "auto":
        return "auto"
    try:
        value = int(low)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{text.strip()!r}: expected auto (one per CPU) or a whole number of 1 or more")
    return value


def parse_list(text):
    """Comma-separated values, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


class Option:
    """One INI key: how to parse it, its default, and a line of help.

    Build with the class methods: Option.str(), .int(), .float(), .bool(), .size(),
    .duration(), .list(), .choice().
    """

    def __init__(self, kind, parse, default=None, required=False, help="", choices=None):
        self.kind, self._parse, self.default = kind, parse, default
        self.required, self.help, self.choices = required, help, choices

    def parse(self, text):
        """Return the value for INI text, or raise ValueError naming what is allowed."""
        return self._parse(text)

    @classmethod
    def str(cls, default="", required=False, help=""):
        return cls("string", lambda t: t.strip(), default, required, help)

    @classmethod
    def int(cls, default=0, required=False, help=""):
        return cls("integer", parse_int, default, required, help)

    @classmethod
    def float(cls, default=0.0, required=False, help=""):
        return cls("number", parse_float, default, required, help)

    @classmethod
    def bool(cls, default=False, required=False, help=""):
        return cls("yes/no", parse_bool, default, required, help)

    @classmethod
    def size(cls, default=0, required=False, help=""):
        return cls("size", parse_size, default, required, help)

    @classmethod
    def duration(cls, default=0.0, required=False, help=""):
        return cls("duration", parse_duration, default, required, help)

    @classmethod
    def workers(cls, default="auto", required=False, help=""):
        return cls("auto or integer", parse_workers, default, required, help)

    @classmethod
    def list(cls, item=builtins.str, default=(), required=False, help=""):
        return cls("list", lambda t: [item(v) for v in parse_list(t)], builtins.list(default), required, help)

    @classmethod
    def choice(cls, choices, default=None, required=False, help=""):
        choices = tuple(choices)

        def parse(text):
            value = text.strip().lower()
            if value not in choices:
                raise ValueError(f"{text.strip()!r}: expected one of {', '.join(choices)}")
            return value

        return cls("choice", parse, default, required, help, choices)
