"""INI file -> validated settings.

Every key is declared, either in CORE_SCHEMA below or in the options of the
component the INI chooses. All problems are collected and reported together,
one line each: ``FILE: [section] key 'value': what is allowed``.
"""

import configparser
import ipaddress
import os
import re
import socket

from jdmail.errors import ConfigError, ConfigErrors
from jdmail.options import Option

LISTENER_SECTIONS = {
    # section: (default listeners, wrapped in TLS by jdmail, protocol)
    "smtp": ("tcp:25", False, "smtp"),
    "submission": ("tcp:587", False, "smtp"),
    "smtps": ("tcp:465", True, "smtp"),
    "pop3": ("tcp:110", False, "pop3"),
    "pop3s": ("tcp:995", True, "pop3"),
    "imap": ("tcp:143", False, "imap"),
    "imaps": ("tcp:993", True, "imap"),
}


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def default_datadir():
    """/var/lib/jdmail for root, $XDG_DATA_HOME/jdmail (~/.local/share/jdmail) otherwise."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/jdmail"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "jdmail")


def _smtp_listener_schema(default_listen, require_auth):
    return {
        "listen": Option.list(default=[default_listen], help="Twisted endpoint strings; empty disables"),
        "require_auth": Option.bool(default=require_auth, help="AUTH before MAIL FROM"),
    }


CORE_SCHEMA = {
    "jdmail": {
        "hostname": Option.str(default="", help="this server's name (default: the machine's FQDN)"),
        "datadir": Option.str(default="", help="where mail, spool, keys and the SQLite directory live"),
        "log_file": Option.str(default="", help="also write the log to this file"),
        "plugin_dirs": Option.list(default=[], help="extra directories holding jdmail/plugins/ modules"),
        "threads": Option.int(default=8, help="threads for blocking work (fsync, password hashing, SQL)"),
        "workers": Option.workers(default=1, help="processes accepting connections (SMTP, POP3, IMAP): "
                                                   "1 = in the server process; auto = one per CPU"),
    },
    "tls": {
        "cert": Option.str(default="", help="PEM certificate chain; empty = self-signed, generated on first start"),
        "key": Option.str(default="", help="PEM private key (may be the same file as cert)"),
    },
    "auth": {
        "allow_plaintext": Option.bool(default=False, help="allow passwords on connections without TLS"),
        "fail_delay": Option.duration(default=2.0, help="wait before answering a failed login"),
        "max_failures": Option.int(default=3, help="failed logins before the connection is closed"),
    },
    "smtp": {
        **_smtp_listener_schema("tcp:25", False),
        "banner": Option.str(default="", help="greeting text after 220 (default: '<hostname> jdmail ESMTP Service ready')"),
        "max_message_size": Option.size(default=50 * 1024**2, help="SIZE limit"),
        "max_recipients": Option.int(default=100, help="RCPTs per message"),
        "max_connections": Option.int(default=200, help="SMTP connections at once, all listeners"),
        "max_connections_per_ip": Option.int(default=20, help="SMTP connections at once from one client IP"),
        "command_timeout": Option.duration(default=300.0, help="idle time allowed between commands"),
        "data_timeout": Option.duration(default=600.0, help="idle time allowed while receiving DATA"),
        "max_hops": Option.int(default=50, help="Received: headers allowed before a message is refused as a loop"),
        "max_line_length": Option.int(default=10000, help="longest line (octets, without CRLF) accepted in DATA"),
        "vrfy": Option.bool(default=False, help="answer VRFY"),
        "expn": Option.bool(default=False, help="answer EXPN"),
        "mynetworks": Option.list(default=[], help="trusted client networks (CIDR) that may relay without AUTH"),
    },
    "submission": _smtp_listener_schema("tcp:587", True),
    "smtps": _smtp_listener_schema("tcp:465", True),
    "pop3": {
        "listen": Option.list(default=["tcp:110"], help="Twisted endpoint strings; empty disables"),
        "banner": Option.str(default="jdmail POP3 Service ready", help="greeting text after +OK"),
        "max_connections": Option.int(default=200, help="POP3 connections at once, all listeners"),
        "max_connections_per_ip": Option.int(default=20, help="POP3 connections at once from one client IP"),
        "timeout": Option.duration(default=600.0, help="idle time allowed (RFC 1939: at least 10m)"),
    },
    "pop3s": {"listen": Option.list(default=["tcp:995"], help="Twisted endpoint strings; empty disables")},
    "imap": {
        "listen": Option.list(default=["tcp:143"], help="Twisted endpoint strings (STARTTLS); empty disables"),
        "banner": Option.str(default="jdmail IMAP4rev1 Service ready", help="greeting text after * OK"),
        "max_connections": Option.int(default=500, help="IMAP connections at once, all listeners"),
        "max_connections_per_ip": Option.int(default=10, help="IMAP connections at once from one client IP"),
        "max_connections_per_user": Option.int(default=10, help="logged-in IMAP sessions at once of one user"),
        "timeout": Option.duration(default=1800.0, help="idle time allowed after login (RFC 3501: at least 30m)"),
        "login_timeout": Option.duration(default=60.0, help="idle time allowed before login"),
        "hibernate_timeout": Option.duration(default=30.0, help="a logged-in session quiet this long (in IDLE "
                                             "or between commands) hibernates; 0s = never"),
    },
    "imaps": {"listen": Option.list(default=["tcp:993"], help="Twisted endpoint strings (implicit TLS); empty disables")},
    "queue": {
        "lifetime": Option.duration(default=5 * 86400.0, help="bounce a message still undelivered after this long"),
        "delay_warning": Option.duration(default=4 * 3600.0, help="warn the sender once after this long; 0 = never"),
        "min_backoff": Option.duration(default=300.0, help="first retry delay after a temporary failure"),
        "max_backoff": Option.duration(default=3600.0, help="longest retry delay (doubling from min_backoff)"),
        "concurrency": Option.int(default=20, help="outbound SMTP transactions at once"),
        "per_destination": Option.int(default=5, help="outbound transactions at once to one domain or relay"),
        "helo": Option.str(default="", help="EHLO/HELO name (default: [jdmail] hostname)"),
        "source_address": Option.str(default="", help="local address for outbound connections (default: any)"),
        "scan_interval": Option.duration(default=1.0, help="how often the queue is scanned for due messages"),
        "smtp_port": Option.int(default=25, help="port of MX hosts (for tests and unusual setups only)"),
        "connection_reuse_time": Option.duration(
            default=2.0, help="keep a connection open this long for the next message to the same "
                              "destination (RSET, then MAIL); 0 = a new connection per message"),
    },
    "dns": {
        "servers": Option.list(default=[], help="DNS servers as ADDRESS or ADDRESS:PORT; empty = the system resolver"),
    },
    "directory": {
        "type": Option.str(default="sqlite", help="the user directory: a directory plugin's kind"),
        "cache_ttl": Option.duration(default=30.0, help="how long a lookup answer is reused; 0 = no cache"),
        "negative_cache_ttl": Option.duration(default=5.0, help="the same for 'no such user/alias/domain'"),
        "cache_size": Option.int(default=10000, help="lookup answers kept at most"),
        "rehash": Option.bool(default=False, help="store a password again with password_scheme after a "
                                                  "successful login when it uses another scheme"),
        "password_scheme": Option.choice(("blf-crypt", "argon2id"), default="blf-crypt",
                                         help="hash scheme for rehash and for jdmailctl"),
    },
    "store": {"type": Option.str(default="maildir", help="the message store: a store plugin's kind")},
    "filters": {
        "chain": Option.list(default=[], help="[filter:NAME] sections to run, in order"),
        "timeout": Option.duration(default=30.0, help="per filter call; on expiry the filter's on_error applies"),
        "on_error": Option.choice(("tempfail", "continue", "accept", "reject"), default="tempfail",
                                  help="verdict when a filter fails or times out"),
        "tag_score": Option.float(default=5.0, help="spam score at which mail is tagged "
                                                    "(X-Spam-Flag: YES); 0 = never"),
        "reject_score": Option.float(default=0.0, help="spam score at which mail is refused "
                                                       "after DATA (550 5.7.1); 0 = never"),
        "junk_tagged": Option.bool(default=True, help="deliver mail tagged as spam into the "
                                                      "recipient's Junk folder"),
    },
}

# Values where 0 would refuse everything or time out at once.
POSITIVE = (("smtp", "max_message_size"), ("smtp", "max_recipients"), ("smtp", "max_hops"),
            ("smtp", "max_line_length"), ("smtp", "command_timeout"), ("smtp", "data_timeout"),
            ("filters", "timeout"), ("imap", "login_timeout"), ("queue", "lifetime"),
            ("queue", "min_backoff"), ("queue", "max_backoff"), ("queue", "concurrency"),
            ("queue", "per_destination"), ("queue", "scan_interval"), ("queue", "smtp_port"))
MIN_IMAP_TIMEOUT = 30 * 60.0        # RFC 3501 5.4: the autologout timer is at least 30 minutes

# Durations where a plain "0" (no unit) means off.
_ZERO_MEANS_OFF = {"queue": ("delay_warning",), "directory": ("cache_ttl", "negative_cache_ttl")}

# Sections whose keys beyond the CORE_SCHEMA ones belong to the chosen component.
COMPONENT_SECTIONS = {"directory": "directory", "store": "store"}
FILTER_COMMON = {
    "type": Option.str(default="", help="the filter plugin's kind (default: the section's NAME)"),
    "on_error": Option.choice(("tempfail", "continue", "accept", "reject"), default=None,
                              help="overrides [filters] on_error for this filter"),
    "timeout": Option.duration(default=None, help="overrides [filters] timeout for this filter"),
    "quarantine": Option.choice(("central", "junk"), default="central",
                                help="where this filter's quarantine verdicts send mail: the central "
                                     "quarantine (jdmailctl quarantine) or the recipient's Junk folder"),
}


class Config:
    """Validated settings: ``config[section][key]`` gives the parsed value."""

    def __init__(self, path, sections, components, relays=None, routing=None, mynetworks=None):
        from jdmail.queue.routing import RoutingTable, TrustedNetworks
        self.path = path
        self._sections = sections
        self.components = components      # section name -> (factory, settings)
        self.relays = relays or {}        # name -> Relay
        self.routing = routing if routing is not None else RoutingTable()
        self.mynetworks = mynetworks if mynetworks is not None else TrustedNetworks()

    def __getitem__(self, section):
        return self._sections[section]

    def get(self, section, default=None):
        return self._sections.get(section, default)

    @property
    def hostname(self):
        return self._sections["jdmail"]["hostname"]

    @property
    def datadir(self):
        return self._sections["jdmail"]["datadir"]


def _parse_section(path, section, raw, schema, errors, also_allowed=()):
    values = {}
    for key, text in raw.items():
        option = schema.get(key)
        if option is None:
            allowed = ", ".join(sorted(set(schema) | set(also_allowed))) or "no keys"
            errors.append(ConfigError(f"is not a known key (allowed here: {allowed})", path, section, key))
            continue
        try:
            values[key] = option.parse(text)
        except ValueError as e:
            errors.append(ConfigError(str(e), path, section, key))
    for key, option in schema.items():
        if key not in values:
            if option.required and key not in raw:
                errors.append(ConfigError(f"is required ({option.help})", path, section, key))
            values[key] = option.default
    return values


def _unrepr(text):
    """configparser keeps a bad line as its repr()."""
    import ast
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


def read_ini(path):
    """Read an INI file into {section: {key: text}}; raise ConfigError (or ConfigErrors,
    one per bad line) on syntax problems."""
    # "=" only: routing keys such as "sender:a@b" contain ":".
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",),
                                       inline_comment_prefixes=(";", "#"),
                                       strict=True, empty_lines_in_values=False)
    parser.optionxform = str
    try:
        with open(path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise ConfigError(f"cannot read the file: line {line} is not UTF-8 text", path) from None
        parser.read_string(text, source=path)
    except FileNotFoundError:
        raise ConfigError("cannot read the file: it does not exist", path) from None
    except IsADirectoryError:
        raise ConfigError("cannot read the file: it is a directory", path) from None
    except PermissionError:
        raise ConfigError("cannot read the file: permission denied", path) from None
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror or e}", path) from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"is given twice (line {e.lineno}); each section may appear once",
                          path, e.section) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(f"is given twice (line {e.lineno}); each key may appear once per section",
                          path, e.section, e.option) from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(f"line {e.lineno}: {e.line.strip()!r} comes before any [section] header",
                          path) from None
    except configparser.ParsingError as e:
        raise ConfigErrors([ConfigError(f"line {lineno}: {_unrepr(line).strip()!r} is not "
                                        f"'key = value', a [section] header or a ; comment", path)
                            for lineno, line in e.errors]) from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"not a valid INI file: {first}", path) from None
    return {s: dict(parser.items(s)) for s in parser.sections()}


def load(path=None, registry=None, datadir=None):
    """Read and validate the INI at ``path`` (None: the embedded default).

    Returns a Config; raises ConfigErrors listing every problem found.
    """
    from jdmail import registry as registry_module
    registry = registry or registry_module
    label = path or "<embedded default>"
    raw = {}
    if path is not None:
        try:
            raw = read_ini(path)
        except ConfigError as e:
            raise ConfigErrors([e]) from None
        except ConfigErrors:
            raise

    errors = []
    sections = {}
    for section, schema in CORE_SCHEMA.items():
        body = dict(raw.get(section, {}))
        if section in COMPONENT_SECTIONS:
            body = {k: v for k, v in body.items() if k in schema}
        for key in _ZERO_MEANS_OFF.get(section, ()):
            if body.get(key, "").strip() == "0":
                body[key] = "0s"      # "0" (no unit) means off
        sections[section] = _parse_section(label, section, body, schema, errors)

    core = sections["jdmail"]
    if core["hostname"] and not _HOSTNAME.fullmatch(core["hostname"]):
        errors.append(ConfigError(f"{core['hostname']!r}: expected a host name such as mail.example.org "
                                  "(letters, digits, '-' and '.')", label, "jdmail", "hostname"))
    core["hostname"] = core["hostname"] or socket.getfqdn()
    core["datadir"] = os.path.abspath(os.path.expanduser(datadir or core["datadir"] or default_datadir()))
    if not sections["smtp"]["banner"]:
        sections["smtp"]["banner"] = f"{core['hostname']} jdmail ESMTP Service ready"
    for section, name in POSITIVE:
        text = raw.get(section, {}).get(name)
        if sections[section][name] <= 0:
            shown = f"{text.strip()!r}: " if text is not None else ""
            errors.append(ConfigError(f"{shown}must be more than 0", label, section, name))

    if sections["imap"]["timeout"] < MIN_IMAP_TIMEOUT:
        text = raw.get("imap", {}).get("timeout", "")
        errors.append(ConfigError(f"{text.strip()!r}: must be at least 30m (RFC 3501 5.4)", label, "imap",
                                  "timeout"))

    plugin_dirs = []
    for d in core["plugin_dirs"]:
        if os.path.isdir(os.path.expanduser(d)):
            plugin_dirs.append(d)
        else:
            errors.append(ConfigError(f"{d!r}: no such directory", label, "jdmail", "plugin_dirs"))
    registry.add_plugin_dirs(plugin_dirs)
    try:
        registry.load()         # find the plugins now, so a name clash is one line too
    except registry_module.RegistryError as e:
        errors.append(ConfigError(str(e), label, "jdmail", "plugin_dirs"))
        raise ConfigErrors(errors) from None
    components = {}
    for section, kind_of in COMPONENT_SECTIONS.items():
        chosen = sections[section]["type"]
        factory = registry.find(kind_of, chosen)
        if factory is None:
            errors.append(ConfigError(registry.unknown_message(kind_of, chosen), label, section, "type"))
            continue
        core_keys = CORE_SCHEMA[section]
        body = {k: v for k, v in raw.get(section, {}).items() if k not in core_keys}
        schema = {k: v for k, v in factory.options.items() if k not in core_keys}
        settings = _parse_section(label, section, body, schema, errors, also_allowed=core_keys)
        components[section] = (factory, settings)

    filter_sections = {s for s in raw if s.startswith("filter:")}
    seen = set()
    for name in sections["filters"]["chain"]:
        section = f"filter:{name}"
        if name in seen:
            errors.append(ConfigError(f"names {name!r} twice", label, "filters", "chain"))
        seen.add(name)
        if section not in raw:
            errors.append(ConfigError(f"names {name!r} but there is no [{section}] section",
                                      label, "filters", "chain"))
    for section in sorted(filter_sections):
        name = section.split(":", 1)[1]
        body = raw[section]
        kind = body.get("type", "").strip() or name
        factory = registry.find("filter", kind)
        if factory is None:
            errors.append(ConfigError(registry.unknown_message("filter", kind), label, section,
                                      "type" if "type" in body else None))
            continue
        schema = {**FILTER_COMMON, **factory.options}
        components[section] = (factory, _parse_section(label, section, body, schema, errors))

    from jdmail.queue import routing as routing_module
    relay_sections = {s for s in raw if s.startswith("relay:")}
    relayhost = (raw.get("routing", {}).get("relayhost") or "").strip() or None
    relays = routing_module.parse_relays({s: raw[s] for s in relay_sections}, label,
                                         relayhost=relayhost, errors=errors)
    table = mynetworks = None
    try:
        table = routing_module.parse_routing(
            {k: v for k, v in raw.get("routing", {}).items() if k != "relayhost"}, relays, label)
    except ConfigErrors as e:
        errors.extend(e.errors)
    try:
        mynetworks = routing_module.TrustedNetworks(sections["smtp"]["mynetworks"], label)
    except ConfigErrors as e:
        errors.extend(e.errors)
    if table is not None and "relayhost" in relays and "default" not in raw.get("routing", {}):
        table.default = routing_module.Route("relay", relays["relayhost"])
    if not sections["queue"]["helo"]:
        sections["queue"]["helo"] = core["hostname"]
    source = sections["queue"]["source_address"]
    if source:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            errors.append(ConfigError(f"{source!r}: expected an IP address of this machine "
                                      "(192.0.2.25, 2001:db8::25) or nothing", label, "queue",
                                      "source_address"))
    if sections["queue"]["max_backoff"] < sections["queue"]["min_backoff"]:
        errors.append(ConfigError("must not be less than min_backoff", label, "queue", "max_backoff"))
    for server in sections["dns"]["servers"]:
        if not _dns_server(server):
            errors.append(ConfigError(f"{server!r}: expected an IP address, optionally with :PORT "
                                      "(192.0.2.53, 127.0.0.1:5353, [::1]:53)", label, "dns", "servers"))

    known = set(CORE_SCHEMA) | filter_sections | relay_sections | {"routing"}
    for section in raw:
        if section not in known:
            allowed = ", ".join(sorted(CORE_SCHEMA)) + ", filter:NAME, relay:NAME, routing"
            errors.append(ConfigError(f"is not a known section (allowed: {allowed})", label, section))

    if errors:
        raise ConfigErrors(errors)
    return Config(label, sections, components, relays, table, mynetworks)


def _dns_server(text):
    """'192.0.2.53', '127.0.0.1:5353', '[::1]:53', '::1' -> (host, port), or None when malformed."""
    import ipaddress
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text.isdigit():
            return None
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    return host, port


def dns_servers(cfg):
    """[dns] servers -> [(host, port)]."""
    return [_dns_server(s) for s in cfg["dns"]["servers"]]
