"""Configuration: typed options, config.load collecting every problem, what
``twistd jdmail --config FILE`` does with a broken INI (exit != 0, one line per
problem, no traceback), and etc/jdmail.ini kept equal to the option schemas."""

import concurrent.futures
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading

from twisted.trial import unittest

from jdmail import config, options, registry
from jdmail.errors import ConfigError, ConfigErrors
from jdmail.options import Option
from tests.fixtures.server import REPO, env

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
SAMPLE = os.path.join(REPO, "etc", "jdmail.ini")
DROPINS = os.path.join(REPO, "tests", "dropins")


def quiet(**listen):
    """Listener sections for a server that may start: loopback, any free port, IMAP off;
    ``listen={section: value}`` overrides one."""
    sections = {"smtp": "tcp:0:interface=127.0.0.1", "submission": "", "smtps": "",
                "pop3": "tcp:0:interface=127.0.0.1", "pop3s": "", "imap": "", "imaps": ""}
    sections.update(listen)
    return "".join(f"[{s}]\nlisten = {v}\n" for s, v in sections.items())


# --- options.py ----------------------------------------------------------------------------

class ParseTests(unittest.TestCase):

    def test_size(self):
        for text, value in [("0", 0), ("512", 512), ("512B", 512), ("10K", 10240), ("10kb", 10240),
                            (" 25M ", 25 * 1024**2), ("25 MB", 25 * 1024**2), ("1G", 1024**3),
                            ("2gb", 2 * 1024**3)]:
            self.assertEqual(options.parse_size(text), value, text)

    def test_bad_size(self):
        for text in ["", "10Q", "-1M", "1.5M", "M", "10 M B", "ten"]:
            with self.assertRaises(ValueError) as cm:
                options.parse_size(text)
            self.assertEqual(str(cm.exception), f"{text!r}: expected a size such as 512K, 25M or 1G")

    def test_duration(self):
        for text, value in [("500ms", 0.5), ("30s", 30.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0),
                            ("2d", 172800.0), (" 10 s ", 10.0), ("0s", 0.0)]:
            self.assertEqual(options.parse_duration(text), value, text)

    def test_bad_duration(self):
        for text in ["30", "", "5 minutes", "s", "-1s", "1w", "1e3s", "30S"]:
            with self.assertRaises(ValueError) as cm:
                options.parse_duration(text)
            self.assertEqual(str(cm.exception), f"{text!r}: expected a duration with a unit, "
                                                "such as 500ms, 30s, 5m, 1h or 2d")

    def test_bool(self):
        for text in ["yes", "YES", " true", "on", "1"]:
            self.assertIs(options.parse_bool(text), True, text)
        for text in ["no", "No", "false ", "off", "0"]:
            self.assertIs(options.parse_bool(text), False, text)
        for text in ["", "maybe", "y", "2", "nope"]:
            with self.assertRaises(ValueError) as cm:
                options.parse_bool(text)
            self.assertEqual(str(cm.exception), f"{text!r}: expected yes or no")

    def test_workers(self):
        self.assertEqual(options.parse_workers(" auto"), "auto")
        self.assertEqual(options.parse_workers("AUTO"), "auto")
        self.assertEqual(options.parse_workers("1"), 1)
        self.assertEqual(options.parse_workers(" 4 "), 4)
        for text in ["0", "-2", "", "two", "1.5"]:
            with self.assertRaises(ValueError) as cm:
                options.parse_workers(text)
            self.assertEqual(str(cm.exception), f"{text.strip()!r}: expected auto (one per CPU) or a whole "
                                                "number of 1 or more")

    def test_int(self):
        self.assertEqual(options.parse_int(" 42 "), 42)
        self.assertEqual(options.parse_int("0"), 0)
        with self.assertRaises(ValueError) as cm:
            options.parse_int("4.2")
        self.assertEqual(str(cm.exception), "'4.2': expected a whole number")
        with self.assertRaises(ValueError) as cm:
            options.parse_int("-3")
        self.assertEqual(str(cm.exception), "'-3': expected a whole number of 0 or more")
        with self.assertRaises(ValueError):
            options.parse_int("")

    def test_list(self):
        self.assertEqual(options.parse_list("a, b ,c"), ["a", "b", "c"])
        self.assertEqual(options.parse_list(""), [])
        self.assertEqual(options.parse_list(" , a,, "), ["a"])

    def test_option_kinds(self):
        self.assertEqual(Option.str().parse("  x y  "), "x y")
        self.assertEqual(Option.int(default=3).default, 3)
        self.assertEqual(Option.size().parse("1K"), 1024)
        self.assertEqual(Option.duration().parse("2m"), 120.0)
        self.assertIs(Option.bool().parse("yes"), True)
        self.assertEqual(Option.list(int).parse("1, 2"), [1, 2])
        self.assertEqual(Option.list(default=("a",)).default, ["a"])
        required = Option.str(required=True, help="h")
        self.assertTrue(required.required)
        self.assertEqual(required.help, "h")

    def test_list_default_is_not_shared(self):
        a = Option.list(default=["x"])
        self.assertIsNot(a.default, Option.list(default=["x"]).default)

    def test_choice(self):
        opt = Option.choice(("reject", "tempfail"), default="tempfail")
        self.assertEqual(opt.parse(" REJECT "), "reject")
        self.assertEqual(opt.choices, ("reject", "tempfail"))
        self.assertEqual(opt.default, "tempfail")
        with self.assertRaises(ValueError) as cm:
            opt.parse("bounce")
        self.assertEqual(str(cm.exception), "'bounce': expected one of reject, tempfail")


# --- config.load ---------------------------------------------------------------------------

class LoadTests(unittest.TestCase):

    def write(self, text, name="jdmail.ini"):
        d = tempfile.mkdtemp(prefix="jdmail-config-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path

    def errors(self, text):
        path = self.write(text)
        with self.assertRaises(ConfigErrors) as cm:
            config.load(path)
        return path, [str(e) for e in cm.exception.errors]

    def test_embedded_default(self):
        cfg = config.load(None, datadir="/tmp/jdmail-x")
        self.assertEqual(cfg.path, "<embedded default>")
        self.assertEqual(cfg.datadir, "/tmp/jdmail-x")
        self.assertEqual(cfg.hostname, socket.getfqdn())
        self.assertEqual(cfg["smtp"]["listen"], ["tcp:25"])
        self.assertEqual(cfg["smtp"]["banner"], f"{socket.getfqdn()} jdmail ESMTP Service ready")
        self.assertEqual(cfg["smtp"]["max_message_size"], 50 * 1024**2)
        self.assertIs(cfg["submission"]["require_auth"], True)
        self.assertIs(cfg["smtp"]["require_auth"], False)
        self.assertEqual(cfg["auth"]["fail_delay"], 2.0)
        self.assertEqual(cfg["filters"]["chain"], [])
        self.assertEqual(cfg["directory"]["type"], "sqlite")
        self.assertEqual(cfg.components["directory"][0].kind, "sqlite")
        self.assertEqual(cfg.components["store"][1], {"path": "", "index_idle_timeout": 10.0})

    def test_values_parsed(self):
        path = self.write("""\
            [jdmail]
            hostname = mx.example.org
            datadir = ~/jdmail-test-data
            [smtp]
            listen = tcp:2525, tcp6:2525
            max_message_size = 10M   ; inline comment
            command_timeout = 90s
            vrfy = yes
            [store]
            type = maildir
            path = /srv/mail
            """)
        cfg = config.load(path)
        self.assertEqual(cfg.path, path)
        self.assertEqual(cfg.hostname, "mx.example.org")
        self.assertEqual(cfg.datadir, os.path.expanduser("~/jdmail-test-data"))
        self.assertEqual(cfg["smtp"]["listen"], ["tcp:2525", "tcp6:2525"])
        self.assertEqual(cfg["smtp"]["max_message_size"], 10 * 1024**2)
        self.assertEqual(cfg["smtp"]["command_timeout"], 90.0)
        self.assertIs(cfg["smtp"]["vrfy"], True)
        self.assertEqual(cfg["smtp"]["banner"], "mx.example.org jdmail ESMTP Service ready")
        self.assertEqual(cfg.components["store"][1], {"path": "/srv/mail", "index_idle_timeout": 10.0})

    def test_datadir_argument_wins(self):
        path = self.write("[jdmail]\ndatadir = /var/tmp/a\n")
        self.assertEqual(config.load(path, datadir="/var/tmp/b").datadir, "/var/tmp/b")

    def test_several_errors_at_once(self):
        path, errors = self.errors("""\
            [jdmail]
            threads = many
            [smtp]
            max_message_size = 10Q
            max_size = 1M
            [auth]
            allow_plaintext = maybe
            fail_delay = 2
            [filters]
            on_error = bounce
            chain = clamav
            [directory]
            type = ldapx
            [store]
            colour = blue
            [smtpd]
            listen = tcp:25
            """)
        self.assertEqual(sorted(errors), sorted([
            f"{path}: [jdmail] threads 'many': expected a whole number",
            f"{path}: [smtp] max_message_size '10Q': expected a size such as 512K, 25M or 1G",
            f"{path}: [smtp] max_size is not a known key (allowed here: {', '.join(sorted(config.CORE_SCHEMA['smtp']))})",
            f"{path}: [auth] allow_plaintext 'maybe': expected yes or no",
            f"{path}: [auth] fail_delay '2': expected a duration with a unit, such as 500ms, 30s, 5m, 1h or 2d",
            f"{path}: [filters] on_error 'bounce': expected one of tempfail, continue, accept, reject",
            f"{path}: [filters] chain names 'clamav' but there is no [filter:clamav] section",
            f"{path}: [directory] type 'ldapx': no directory plugin has that name (available: ldap, mysql, sqlite)",
            f"{path}: [store] colour is not a known key (allowed here: index_idle_timeout, path, type)",
            f"{path}: [smtpd] is not a known section (allowed: {', '.join(sorted(config.CORE_SCHEMA))}, filter:NAME, relay:NAME, routing)",
        ]))
        for line in errors:
            self.assertNotIn("\n", line)

    def test_zero_where_it_would_refuse_everything(self):
        path, errors = self.errors("[smtp]\nmax_message_size = 0K\nmax_recipients = 0\nmax_hops = 0\n"
                                   "max_line_length = 0\ncommand_timeout = 0s\ndata_timeout = 0ms\n"
                                   "[filters]\ntimeout = 0s\n")
        self.assertEqual(errors, [f"{path}: [smtp] max_message_size '0K': must be more than 0",
                                  f"{path}: [smtp] max_recipients '0': must be more than 0",
                                  f"{path}: [smtp] max_hops '0': must be more than 0",
                                  f"{path}: [smtp] max_line_length '0': must be more than 0",
                                  f"{path}: [smtp] command_timeout '0s': must be more than 0",
                                  f"{path}: [smtp] data_timeout '0ms': must be more than 0",
                                  f"{path}: [filters] timeout '0s': must be more than 0"])

    def test_zero_where_it_means_no_limit(self):
        path = self.write("[smtp]\nmax_connections = 0\nmax_connections_per_ip = 0\n"
                          "[pop3]\ntimeout = 0s\nmax_connections = 0\n[auth]\nmax_failures = 0\n"
                          "fail_delay = 0s\n")
        cfg = config.load(path)
        self.assertEqual((cfg["smtp"]["max_connections"], cfg["pop3"]["timeout"], cfg["auth"]["max_failures"]),
                         (0, 0.0, 0))

    def test_chain_twice(self):
        self.addCleanup(registry.remove_plugin_dirs, [DROPINS])
        path, errors = self.errors(f"""\
            [jdmail]
            plugin_dirs = {DROPINS}
            [filters]
            chain = subject_words, subject_words
            [filter:subject_words]
            words = a
            """)
        self.assertEqual(errors, [f"{path}: [filters] chain names 'subject_words' twice"])

    def test_syntax_errors(self):
        cases = {
            "listen = tcp:25\n": "line 1: 'listen = tcp:25' comes before any [section] header",
            "[smtp]\nlisten = tcp:25\nlisten = tcp:26\n":
                "[smtp] listen is given twice (line 3); each key may appear once per section",
            "[smtp]\nbanner = a\n[pop3]\n[smtp]\n": "[smtp] is given twice (line 4); each section may appear once",
            "[smtp\nlisten = 1\n": "line 1: '[smtp' comes before any [section] header",
        }
        for text, expected in cases.items():
            path, errors = self.errors(text)
            self.assertEqual(errors, [f"{path}: {expected}"], text)

    def test_each_bad_line(self):
        path, errors = self.errors("[smtp]\nbanner = a\njust words\n[pop3]\nmore words\n")
        self.assertEqual(errors, [
            f"{path}: line 3: 'just words' is not 'key = value', a [section] header or a ; comment",
            f"{path}: line 5: 'more words' is not 'key = value', a [section] header or a ; comment"])

    def test_unreadable(self):
        with self.assertRaises(ConfigErrors) as cm:
            config.load("/nonexistent/jdmail.ini")
        self.assertEqual(str(cm.exception), "/nonexistent/jdmail.ini: cannot read the file: it does not exist")
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        with self.assertRaises(ConfigErrors) as cm:
            config.load(d)
        self.assertEqual(str(cm.exception), f"{d}: cannot read the file: it is a directory")
        path = self.write("")
        with open(path, "wb") as f:
            f.write(b"[smtp]\nbanner = caf\xe9\n")
        with self.assertRaises(ConfigErrors) as cm:
            config.load(path)
        self.assertEqual(str(cm.exception), f"{path}: cannot read the file: line 2 is not UTF-8 text")

    def test_config_error_text(self):
        self.assertEqual(str(ConfigError("msg", "f.ini", "smtp", "listen")), "f.ini: [smtp] listen msg")
        self.assertEqual(str(ConfigError("msg", "f.ini", "smtp")), "f.ini: [smtp] msg")
        self.assertEqual(str(ConfigError("msg", "f.ini")), "f.ini: msg")
        self.assertEqual(str(ConfigError("msg")), "msg")
        self.assertEqual(str(ConfigErrors([ConfigError("a"), ConfigError("b")])), "a\nb")


# --- twistd jdmail --config BROKEN ---------------------------------------------------------

# name: (INI text, [expected stderr line after "jdmail: FILE: "]); {dir} is the case's directory.
CASES = {
    "unknown_section": ("[smtpd]\nlisten = tcp:25\n",
                        ["[smtpd] is not a known section (allowed: auth, directory, dns, filters, imap, imaps, "
                         "jdmail, pop3, pop3s, queue, smtp, smtps, store, submission, tls, filter:NAME, "
                         "relay:NAME, routing)"]),
    "unknown_key": ("[pop3]\nbanner = hi\nbaner = hi\n",
                    ["[pop3] baner is not a known key (allowed here: banner, listen, max_connections, "
                     "max_connections_per_ip, timeout)"]),
    "bad_size": ("[smtp]\nmax_message_size = 10Q\n",
                 ["[smtp] max_message_size '10Q': expected a size such as 512K, 25M or 1G"]),
    "bad_duration": ("[pop3]\ntimeout = 10\n",
                     ["[pop3] timeout '10': expected a duration with a unit, such as 500ms, 30s, 5m, 1h or 2d"]),
    "bad_bool": ("[submission]\nrequire_auth = sometimes\n",
                 ["[submission] require_auth 'sometimes': expected yes or no"]),
    "bad_choice": ("[filters]\non_error = bounce\n",
                   ["[filters] on_error 'bounce': expected one of tempfail, continue, accept, reject"]),
    "unknown_directory_type": ("[directory]\ntype = ldapx\n",
                               ["[directory] type 'ldapx': no directory plugin has that name (available: ldap, mysql, sqlite)"]),
    "chain_missing_section": ("[filters]\nchain = clamav\n",
                              ["[filters] chain names 'clamav' but there is no [filter:clamav] section"]),
    "no_section_header": ("hostname = mx.example.org\n[jdmail]\n",
                          ["line 1: 'hostname = mx.example.org' comes before any [section] header"]),
    "duplicate_key": ("[smtp]\nlisten = tcp:25\nlisten = tcp:2525\n",
                      ["[smtp] listen is given twice (line 6); each key may appear once per section"]),
    "garbage": ("\x00\x01 garbage \x7f\n", ["line 1: '\\x00\\x01 garbage \\x7f' comes before any [section] header"]),
    "bad_endpoint": (quiet(smtps="tcp:abc"),
                     ["[smtps] listen 'tcp:abc' is not a valid Twisted endpoint string (such as tcp:25 or "
                      "tcp:25:interface=192.0.2.1): invalid literal for int() with base 10: 'abc'"]),
    "missing_cert": (quiet() + "[tls]\ncert = /nonexistent/jdmail.pem\n",
                     ["[tls] cert '/nonexistent/jdmail.pem': cannot read: No such file or directory"]),
    "several": ("[smtp]\nmax_recipients = lots\nvrfy = perhaps\n[pop3]\nlisten = tcp:abc\n[bogus]\n",
                ["[smtp] max_recipients 'lots': expected a whole number",
                 "[smtp] vrfy 'perhaps': expected yes or no",
                 "[bogus] is not a known section (allowed: auth, directory, dns, filters, imap, imaps, jdmail, "
                 "pop3, pop3s, queue, smtp, smtps, store, submission, tls, filter:NAME, relay:NAME, routing)"]),
    "several_at_build": (quiet(smtps="tcp") + "[tls]\ncert = /nonexistent/c.pem\n",
                         ["[tls] cert '/nonexistent/c.pem': cannot read: No such file or directory",
                          "[smtps] listen 'tcp' is not a valid Twisted endpoint string (such as tcp:25 or "
                          "tcp:25:interface=192.0.2.1): _parseTCP() missing 1 required positional "
                          "argument: 'port'"]),
    "tls_key_mismatch": (quiet() + "[tls]\ncert = {dir}/a.crt\nkey = {dir}/b.key\n",
                         ["[tls] key '{dir}/a.crt' and '{dir}/b.key' do not make a usable TLS setup (does the "
                          "key belong to the certificate?): key values mismatch"]),
    "tls_key_without_cert": (quiet() + "[tls]\nkey = {dir}/b.key\n",
                             ["[tls] key is set but [tls] cert is not: give both (or neither, for a "
                              "self-signed certificate)"]),
    "tls_not_pem": (quiet() + "[tls]\ncert = {dir}/jdmail.ini\n",
                    ["[tls] cert '{dir}/jdmail.ini': not a usable PEM certificate: no certificate found"]),
    "bad_hostname": ("[jdmail]\nhostname = mail server\ndatadir = {dir}/data\n",
                     ["[jdmail] hostname 'mail server': expected a host name such as mail.example.org "
                      "(letters, digits, '-' and '.')"]),
    "tls_in_tls": (quiet(pop3s="ssl:995"),
                   ["[pop3s] listen 'ssl:995': [pop3s] is already TLS with the [tls] certificate; use a plain "
                    "endpoint such as tcp:PORT"]),
}

_tmp = None
_results = {}
_lock = threading.Lock()


def _run_case(name):
    text, _expected = CASES[name]
    d = os.path.join(_tmp, name)
    os.makedirs(d)
    path = os.path.join(d, "jdmail.ini")
    if "tls_" in name:
        from jdmail.tls import _generate_self_signed
        _generate_self_signed("a.test", os.path.join(d, "a.crt"), os.path.join(d, "a.key"))
        _generate_self_signed("b.test", os.path.join(d, "b.crt"), os.path.join(d, "b.key"))
    if name in ("no_section_header", "garbage", "bad_hostname"):
        body = ""
    else:
        body = f"[jdmail]\ndatadir = {d}/data\nhostname = mail.test\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(body + text.replace("{dir}", d))
    p = subprocess.run(TWISTD + ["jdmail", "--config", path], env=env(), cwd=d, capture_output=True,
                       text=True, timeout=60)
    return path, p


def result(name):
    """(path, CompletedProcess) of twistd on CASES[name]; every case runs at once, first time."""
    global _tmp
    with _lock:
        if not _results:
            _tmp = tempfile.mkdtemp(prefix="jdmail-twistd-config-")
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                for case, outcome in zip(CASES, pool.map(_run_case, CASES)):
                    _results[case] = outcome
    return _results[name]


class TwistdRefusesTests(unittest.TestCase):
    """Each broken INI stops ``twistd jdmail`` before it listens: exit 1, stderr holds
    exactly one ``jdmail: FILE: …`` line per problem, no traceback, nothing else."""

    def check(self, name):
        path, p = result(name)
        output = p.stdout + p.stderr
        self.assertNotEqual(p.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        d = os.path.dirname(path)
        expected = [f"jdmail: {path}: {line}".replace("{dir}", d) for line in CASES[name][1]]
        self.assertEqual(sorted(p.stderr.splitlines()), sorted(expected))
        self.assertNotIn("Usage:", output)

    def test_unknown_section(self):
        self.check("unknown_section")

    def test_unknown_key(self):
        self.check("unknown_key")

    def test_bad_size(self):
        self.check("bad_size")

    def test_bad_duration(self):
        self.check("bad_duration")

    def test_bad_bool(self):
        self.check("bad_bool")

    def test_bad_choice(self):
        self.check("bad_choice")

    def test_unknown_directory_type(self):
        self.check("unknown_directory_type")

    def test_chain_missing_section(self):
        self.check("chain_missing_section")

    def test_no_section_header(self):
        self.check("no_section_header")

    def test_duplicate_key(self):
        self.check("duplicate_key")

    def test_garbage(self):
        self.check("garbage")

    def test_bad_endpoint(self):
        self.check("bad_endpoint")

    def test_missing_cert(self):
        self.check("missing_cert")

    def test_several_problems_one_line_each(self):
        self.check("several")

    def test_several_problems_found_while_building(self):
        self.check("several_at_build")

    def test_ssl_endpoint_in_tls_section(self):
        self.check("tls_in_tls")

    def test_key_that_does_not_match_the_cert(self):
        self.check("tls_key_mismatch")

    def test_key_without_cert(self):
        self.check("tls_key_without_cert")

    def test_cert_that_is_not_pem(self):
        self.check("tls_not_pem")

    def test_bad_hostname(self):
        self.check("bad_hostname")

    def test_jdmail_config_environment(self):
        """With no --config, twistd jdmail reads $JDMAIL_CONFIG, as jdmailctl does."""
        path, _p = result("bad_size")
        p = subprocess.run(TWISTD + ["jdmail"], env=dict(env(), JDMAIL_CONFIG=path), capture_output=True,
                           text=True, timeout=60, cwd=os.path.dirname(path))
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, f"jdmail: {path}: [smtp] max_message_size '10Q': expected a size such as "
                                   "512K, 25M or 1G\n")

    def test_missing_file(self):
        p = subprocess.run(TWISTD + ["jdmail", "--config", "/nonexistent/jdmail.ini"], env=env(),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, "jdmail: /nonexistent/jdmail.ini: cannot read the file: it does not exist\n")

    def test_port_in_use(self):
        """A listener that cannot bind stops the server: exit 1, one log line naming the
        section and endpoint, no traceback, and the other listeners are not left open."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        d = tempfile.mkdtemp(prefix="jdmail-busy-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "jdmail.ini")
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        with open(path, "w") as f:
            f.write(f"[jdmail]\ndatadir = {d}/data\nhostname = mail.test\n" + quiet(submission=endpoint))
        p = subprocess.run(TWISTD + ["jdmail", "--config", path], env=env(), cwd=d, capture_output=True,
                           text=True, timeout=60)
        output = p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "cannot listen" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(f"jdmail: {path}: [submission] listen '{endpoint}': cannot listen: ", lines[0])
        self.assertIn("Address already in use", lines[0])
        self.assertFalse(os.path.exists(os.path.join(d, "data", "run", "listening.json")))


# --- etc/jdmail.ini ------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*;?\s*\[([^\]\s]+)\]\s*$")
_KEY = re.compile(r"^\s*(;?)\s*([a-z][a-z0-9_]*)\s*=(.*)$")


def sample_keys(path):
    """{section: {key: (commented, value)}} for every key line, commented or not."""
    sections, current = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _HEADER.match(line)
            if m:
                current = sections.setdefault(m.group(1), {})
                continue
            m = _KEY.match(line)
            if m and current is not None:
                current[m.group(2)] = (bool(m.group(1)), m.group(3).split(" ;")[0].strip())
    return sections


class SampleConfigTests(unittest.TestCase):
    """etc/jdmail.ini shows every option (with its default), and only options that exist."""

    def setUp(self):
        self.keys = sample_keys(SAMPLE)

    def builtin(self, kind):
        return {name: f for name, f in registry.factories(kind).items()
                if os.path.realpath(registry._origin(f)).startswith(os.path.join(os.path.realpath(REPO), "jdmail"))}

    def test_loads(self):
        cfg = config.load(SAMPLE)
        self.assertEqual(cfg.path, SAMPLE)

    def test_every_core_key_shown(self):
        for section, schema in config.CORE_SCHEMA.items():
            self.assertIn(section, self.keys, f"[{section}] missing from etc/jdmail.ini")
            for key in schema:
                self.assertIn(key, self.keys[section], f"[{section}] {key} missing from etc/jdmail.ini")

    def test_every_builtin_component_key_shown(self):
        for section in config.COMPONENT_SECTIONS:
            for name, factory in self.builtin(config.COMPONENT_SECTIONS[section]).items():
                for key in factory.options:
                    self.assertIn(key, self.keys[section], f"[{section}] {key} ({name}) missing")

    def test_every_builtin_filter_shown(self):
        shown = {}
        for section, keys in self.keys.items():
            if section.startswith("filter:"):
                kind = keys.get("type", (None, section.split(":", 1)[1]))[1]
                shown.setdefault(kind, set()).update(keys)
        for name, factory in self.builtin("filter").items():
            self.assertIn(name, shown, f"no [filter:…] section for the built-in filter {name!r}")
            for key in list(factory.options) + list(config.FILTER_COMMON):
                self.assertIn(key, shown[name], f"[filter:{name}] {key} missing")

    def test_filter_sections_are_all_commented_examples(self):
        """A filter runs only when [filters] chain names it, so the sample shows every
        [filter:NAME] section the same way: commented out, with all its keys."""
        with open(SAMPLE, encoding="utf-8") as f:
            headers = [line.strip() for line in f if _HEADER.match(line)]
        filters = [h for h in headers if "[filter:" in h]
        self.assertGreater(len(filters), 5)
        self.assertEqual([h for h in filters if not h.startswith(";[filter:")], [])
        for section, keys in self.keys.items():
            if section.startswith("filter:"):
                self.assertEqual([k for k, (commented, _v) in keys.items() if not commented], [], section)

    def test_filter_values_shown_are_the_defaults(self):
        shown = {}
        for section, keys in self.keys.items():
            if section.startswith("filter:"):
                shown[keys.get("type", (None, section.split(":", 1)[1]))[1]] = keys
        for name, factory in self.builtin("filter").items():
            for key, option in factory.options.items():
                _commented, text = shown[name][key]
                if option.default in (None, "", [], ()):
                    self.assertEqual(text, "", f"[filter:{name}] {key}")
                else:
                    self.assertEqual(option.parse(text), option.default, f"[filter:{name}] {key} = {text}")

    def test_every_key_shown_is_known(self):
        directory_keys = {k for f in self.builtin("directory").values() for k in f.options}
        store_keys = {k for f in self.builtin("store").values() for k in f.options}
        for section, keys in self.keys.items():
            if section.startswith("filter:"):
                continue        # checked by test_uncommented_sample_loads, with the dropin
            if section == "routing":
                self.assertEqual(set(keys), {"relayhost", "default"})
                continue
            self.assertIn(section, config.CORE_SCHEMA, f"unknown section [{section}] in etc/jdmail.ini")
            allowed = set(config.CORE_SCHEMA[section])
            allowed |= {"directory": directory_keys, "store": store_keys}.get(section, set())
            for key in keys:
                self.assertIn(key, allowed, f"etc/jdmail.ini shows [{section}] {key}, which does not exist")

    def test_shown_values_are_the_defaults(self):
        """Where a key has a non-empty default, the sample shows that default."""
        for section, schema in config.CORE_SCHEMA.items():
            for key, option in schema.items():
                if not option.default:
                    continue
                commented, text = self.keys[section][key]
                self.assertEqual(option.parse(text), option.default, f"[{section}] {key} = {text}")

    def test_uncommented_sample_loads(self):
        """Uncomment every key (plugin_dirs pointed at tests/dropins): still a valid config,
        with each built-in directory type in turn (the keys of the others left out)."""
        kinds = self.builtin("directory")
        self.assertIn("ldap", kinds)
        for kind, factory in kinds.items():
            self.uncommented_sample_loads(kind, set(factory.options))

    def uncommented_sample_loads(self, kind, keys):
        keys |= set(config.CORE_SCHEMA["directory"])
        out, section = [], None
        with open(SAMPLE, encoding="utf-8") as f:
            for line in f:
                header, key = _HEADER.match(line), _KEY.match(line)
                if header:
                    section = header.group(1)
                if header or key:
                    if section == "directory" and key and key.group(2) not in keys:
                        continue
                    line = line.lstrip().lstrip(";").lstrip()
                    if line.startswith("plugin_dirs"):
                        line = f"plugin_dirs = {DROPINS}\n"
                    if section == "directory" and line.startswith("type"):
                        line = f"type = {kind}\n"
                out.append(line)
        d = tempfile.mkdtemp(prefix="jdmail-sample-")
        self.addCleanup(shutil.rmtree, d, True)
        self.addCleanup(registry.remove_plugin_dirs, [DROPINS])
        path = os.path.join(d, "jdmail.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(out)
        cfg = config.load(path)
        for section, keys in sample_keys(path).items():
            if section == "routing":
                continue        # free-form keys: parsed into cfg.routing / cfg.relays
            for key in keys:
                parsed = dict(cfg.get(section) or {}, **cfg.components.get(section, (None, {}))[1])
                self.assertIn(key, parsed, f"[{section}] {key}")


class OutboundConfigTests(unittest.TestCase):
    """[queue], [dns], [smtp] mynetworks, relayhost, [relay:NAME] and [routing]."""

    def load(self, text):
        d = tempfile.mkdtemp(prefix="jdmail-config-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "jdmail.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path, config.load(path)

    def test_defaults(self):
        cfg = config.load(None, datadir="/tmp/jdmail-x")
        q = cfg["queue"]
        self.assertEqual((q["lifetime"], q["delay_warning"], q["min_backoff"], q["max_backoff"]),
                         (5 * 86400.0, 4 * 3600.0, 300.0, 3600.0))
        self.assertEqual((q["concurrency"], q["per_destination"], q["smtp_port"]), (20, 5, 25))
        self.assertEqual(q["helo"], cfg.hostname)
        self.assertEqual(cfg["dns"]["servers"], [])
        self.assertEqual(config.dns_servers(cfg), [])
        self.assertEqual(cfg.routing.route("a@b.example", "c@d.example").kind, "direct")
        self.assertFalse(cfg.mynetworks.contains("127.0.0.1"))

    def test_routing(self):
        path, cfg = self.load("""\
            [smtp]
            mynetworks = 127.0.0.0/8, ::1
            [dns]
            servers = 127.0.0.1:5353, [::1]:53, 192.0.2.1
            [queue]
            delay_warning = 0
            helo = out.example.org
            [relay:hq]
            host = smtp.hq.example
            port = 587
            tls = required
            username = branch
            password = secret
            [routing]
            relayhost = isp.example:2525
            sender:finance@example.org = relay:hq
            recipient:partner.example = direct
            """)
        self.assertTrue(cfg.mynetworks.contains("127.0.0.5"))
        self.assertEqual(config.dns_servers(cfg), [("127.0.0.1", 5353), ("::1", 53), ("192.0.2.1", 53)])
        self.assertEqual(cfg["queue"]["delay_warning"], 0)
        self.assertEqual(cfg["queue"]["helo"], "out.example.org")
        self.assertEqual(sorted(cfg.relays), ["hq", "relayhost"])
        route = cfg.routing.route("finance@example.org", "x@y.example")
        self.assertEqual((route.kind, route.relay.name, route.relay.port), ("relay", "hq", 587))
        self.assertEqual(cfg.routing.route("b@example.org", "x@partner.example").kind, "direct")
        route = cfg.routing.route("b@example.org", "x@y.example")
        self.assertEqual((route.kind, route.relay.host, route.relay.port), ("relay", "isp.example", 2525))

    def test_errors(self):
        path = os.path.join(tempfile.mkdtemp(prefix="jdmail-config-"), "jdmail.ini")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "w") as f:
            f.write("[smtp]\nmynetworks = 10.0.0.0/8, bogus\n[dns]\nservers = dns.example\n"
                    "[queue]\nconcurrency = 0\n[routing]\ndefault = relay:nowhere\n")
        with self.assertRaises(ConfigErrors) as cm:
            config.load(path)
        text = "\n".join(str(e) for e in cm.exception.errors)
        self.assertIn("[smtp] mynetworks", text)
        self.assertIn("[dns] servers 'dns.example'", text)
        self.assertIn("[queue] concurrency", text)
        self.assertIn("[routing] default", text)


class DirectoryConfigTests(unittest.TestCase):
    """[directory]: the keys every backend shares, next to the chosen backend's own."""

    def load(self, text):
        d = tempfile.mkdtemp(prefix="jdmail-config-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "jdmail.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path, config.load(path)

    def test_defaults_and_values(self):
        cfg = config.load(None, datadir="/tmp/jdmail-x")
        self.assertEqual((cfg["directory"]["cache_ttl"], cfg["directory"]["negative_cache_ttl"],
                          cfg["directory"]["rehash"], cfg["directory"]["password_scheme"]),
                         (30.0, 5.0, False, "blf-crypt"))
        _path, cfg = self.load("""\
            [directory]
            path = /tmp/x.sqlite
            cache_ttl = 0
            negative_cache_ttl = 500ms
            rehash = yes
            password_scheme = ARGON2ID
            """)
        d = cfg["directory"]
        self.assertEqual((d["cache_ttl"], d["negative_cache_ttl"], d["rehash"], d["password_scheme"]),
                         (0, 0.5, True, "argon2id"))
        self.assertEqual(cfg.components["directory"][1], {"path": "/tmp/x.sqlite"})

    def test_bad_values_one_line_each(self):
        with self.assertRaises(ConfigErrors) as cm:
            self.load("[directory]\ncache_ttl = 1x\npassword_scheme = md5-crypt\nbogus = 1\n")
        lines = [str(e).split(": ", 1)[1] for e in cm.exception.errors]
        self.assertEqual(lines, [
            "[directory] cache_ttl '1x': expected a duration with a unit, such as 500ms, 30s, 5m, 1h or 2d",
            "[directory] password_scheme 'md5-crypt': expected one of blf-crypt, argon2id",
            "[directory] bogus is not a known key (allowed here: cache_size, cache_ttl, negative_cache_ttl, "
            "password_scheme, path, rehash, type)"])
