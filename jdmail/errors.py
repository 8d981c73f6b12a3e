"""Exceptions shared by every part of jdmail."""


class ConfigError(Exception):
    """One problem in the configuration, phrased for the admin.

    str() gives the one line the admin reads: file, section, key, what is allowed.
    """

    def __init__(self, message, path=None, section=None, key=None):
        self.path, self.section, self.key = path, section, key
        where = []
        if path:
            where.append(f"{path}:")
        if section:
            where.append(f"[{section}]")
        if key:
            where.append(f"{key}")
        prefix = " ".join(where)
        super().__init__(f"{prefix} {message}".strip() if prefix else message)


class ConfigErrors(Exception):
    """Every configuration problem found in one pass, one line each."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class SMTPReplyError(Exception):
    """An SMTP reply to send instead of going on: code, enhanced status code, text."""

    def __init__(self, code, enhanced, text):
        super().__init__(f"{code} {enhanced} {text}")
        self.code, self.enhanced, self.text = code, enhanced, text


class DirectoryUnavailable(Exception):
    """The user directory backend cannot answer now; callers answer with a temporary failure."""


class DirectoryError(Exception):
    """An administrative directory operation was refused (duplicate, unknown domain, bad address)."""


class FilterUnavailable(Exception):
    """A service a filter needs (its database, a daemon) cannot answer now. The filter
    chain logs str() as one line, without a traceback, and applies the filter's on_error."""
