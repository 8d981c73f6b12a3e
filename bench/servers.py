"""Private server instances on loopback ports, and what their processes cost.

``Dovecot`` runs Debian's dovecot with its own ``-c`` config under the run's
temp dir (base_dir, state_dir and logs there too): it never touches, stops or
reads the system's dovecot. ``Jdmail`` runs ``twistd jdmail`` from this
checkout with a generated INI. Both expose ``pids()`` (every process of the
server), ``cpu_seconds()`` and ``memory()`` for the workloads.
"""

import json
import os
import pwd
import grp
import resource
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class ServerError(Exception):
    """A server could not be set up or started (the message says why)."""


class NotServed(ServerError):
    """The server runs but does not serve the protocol (jdmail before its IMAP server)."""


# --- processes -----------------------------------------------------------------

def _children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def process_tree(root):
    """``root`` and all its live descendants."""
    kids = _children_map()
    out, todo = [], [root]
    while todo and len(out) < 100000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:].split()


def tree_cpu_seconds(root):
    """CPU (user+system) used so far by ``root``'s process tree, including children it
    has already reaped (Dovecot's login processes come and go)."""
    total = 0
    for pid in process_tree(root):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])            # utime, stime
        if pid == root:
            total += int(f[13]) + int(f[14])        # cutime, cstime (reaped children)
    return total / CLK_TCK


def system_busy_seconds():
    """CPU seconds spent busy (all CPUs, everything but idle and iowait) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def tree_memory(root):
    """{'processes', 'rss', 'pss'} in bytes over ``root``'s process tree. RSS counts
    shared pages once per process (what ``ps`` sums); PSS splits them fairly."""
    rss = pss = n = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
            n += 1
        except (OSError, ValueError):
            continue
    return {"processes": n, "rss": rss, "pss": pss}


def raise_nofile(want):
    """Raise RLIMIT_NOFILE (soft, and hard when root and needed) to at least ``want``
    if possible; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    new = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, max(want, soft)))
    if new == resource.RLIM_INFINITY:
        new = max(want, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _preexec(nofile):
    def fn():
        os.setsid()
        raise_nofile(nofile)
    return fn


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GREETINGS = {"imap": (b"* OK", b"* PREAUTH"), "pop3": (b"+OK",), "smtp": (b"220",)}


def wait_greeting(port, timeout, proc=None, log=lambda: "", protocol="imap"):
    """Wait until ``port`` answers with a ``protocol`` greeting; raise ServerError otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"exited with status {proc.returncode}\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                data = s.recv(512)
                if data.startswith(GREETINGS[protocol]):
                    return data.decode(errors="replace").strip()
                last = data
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise ServerError(f"no {protocol.upper()} greeting on 127.0.0.1:{port} after {timeout}s ({last!r})\n{log()}")


def stop_process(proc, root_pid, timeout=20):
    """SIGTERM ``proc`` (a server we started), wait, then SIGKILL what is left of its tree."""
    if proc is None:
        return
    tree = process_tree(root_pid) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _tail(path, n=40):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --- users ---------------------------------------------------------------------

def mail_owner():
    """(uid, gid, user name) the Dovecot mail processes run as: nobody when we are root
    (Dovecot refuses uid 0 for mail), ourselves otherwise."""
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("nobody")
            gid = pw.pw_gid
            try:
                gid = grp.getgrnam("nogroup").gr_gid
            except KeyError:
                pass
            return pw.pw_uid, gid, "nobody"
        except KeyError:
            return 65534, 65534, "nobody"
    pw = pwd.getpwuid(os.geteuid())
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def maildir_of(mailroot, address):
    local, domain = address.lower().split("@")
    return os.path.join(mailroot, domain, local, "Maildir")


# --- Dovecot -------------------------------------------------------------------

DOVECOT_CONF = """\
# A private Dovecot for jdmail's benchmark (bench/). Nothing here is shared with
# a system dovecot: base_dir, state_dir, logs and mail all live under {root}.
instance_name = jdmail-bench-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
info_log_path = {root}/log/dovecot-info.log
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = {uid}
first_valid_gid = {gid}
{users}
default_process_limit = {process_limit}
default_client_limit = {client_limit}
default_vsz_limit = 1G

namespace inbox {{
  inbox = yes
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
}}

passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
  default_fields = uid={uid} gid={gid}
}}
{services}
{extra}
"""

DOVECOT_SERVICE = """
protocol {proto} {{
  mail_max_userip_connections = {per_user}
}}
service {proto}-login {{
  inet_listener {proto} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {proto}s {{
    port = 0
  }}
{login_extra}}}
service {proto} {{
  process_limit = {process_limit}
}}
"""

# Dovecot's documented "high-performance mode" for login processes
# (https://doc.dovecot.org/admin_manual/login_processes/): long-lived login
# processes, each proxying many clients, one per CPU kept ready.
PERFORMANCE_LOGIN = """\
  service_count = 0
  client_limit = {client_limit}
  process_min_avail = {cpus}
  vsz_limit = 1G
"""

# Idle IMAP sessions in IDLE are moved out of their imap process into one
# imap-hibernate process (Dovecot's way of holding many idle clients). The mail
# processes run as another user than imap-hibernate: both sockets are open to
# all (this instance lives in a private temp dir, on loopback).
HIBERNATE = """\
imap_hibernate_timeout = 5s
service imap-hibernate {{
  unix_listener imap-hibernate {{
    mode = 0666
  }}
  client_limit = {client_limit}
  vsz_limit = 1G
}}
service imap {{
  unix_listener imap-master {{
    mode = 0666
  }}
}}
"""


class Dovecot:
    """A private Dovecot serving ``protocols`` (imap, pop3) on loopback ports
    (``ports[proto]``; ``port`` is the first). ``performance``: Dovecot's
    high-performance login mode; ``hibernate``: idle IMAP sessions hibernate."""

    name = "dovecot"
    label = "Dovecot"

    def __init__(self, root, max_connections=2000, extra_conf="", protocols=("imap",),
                 performance=False, hibernate=False):
        self.root = root
        self.mailroot = os.path.join(root, "mail")
        self.conf = os.path.join(root, "dovecot.conf")
        self.port = None
        self.ports = {}
        self.proc = None
        self.max_connections = max_connections
        self.extra_conf = extra_conf
        self.protocols = tuple(protocols)
        self.performance = performance
        self.hibernate = hibernate
        self.uid, self.gid, self.user = mail_owner()
        self.version = ""

    @staticmethod
    def missing(protocols=("imap",)):
        """Debian packages to install for ``protocols``."""
        out = []
        for proto in protocols:
            if not os.path.exists(f"/usr/lib/dovecot/{proto}"):
                out.append(f"dovecot-{proto}d")
        return out

    def maildir(self, address):
        return maildir_of(self.mailroot, address)

    def setup(self, users):
        """``users``: [(address, '{SCHEME}hash')]. Writes the passwd-file and config."""
        os.makedirs(os.path.join(self.root, "log"), exist_ok=True)
        os.makedirs(self.mailroot, exist_ok=True)
        os.chmod(self.root, 0o755)
        lines = []
        for address, hashed in users:
            home = os.path.dirname(self.maildir(address))
            lines.append(f"{address}:{hashed}:{self.uid}:{self.gid}::{home}::\n")
        path = os.path.join(self.root, "users")
        with open(path, "w") as f:
            f.writelines(lines)
        os.chmod(path, 0o644)
        self.ports = {proto: free_port() for proto in self.protocols}
        self.port = self.ports[self.protocols[0]]
        if os.geteuid() == 0:
            users_conf = ""
            login_extra = ""
        else:   # unprivileged: every process runs as us, no chroot
            group = grp.getgrgid(self.gid).gr_name
            users_conf = (f"default_login_user = {self.user}\ndefault_internal_user = {self.user}\n"
                          f"default_internal_group = {group}\n")
            login_extra = "  chroot =\n"
        n = self.max_connections + 100
        if self.performance:
            login_extra += PERFORMANCE_LOGIN.format(client_limit=n, cpus=os.cpu_count() or 1)
        services = "".join(DOVECOT_SERVICE.format(proto=p, port=self.ports[p], per_user=n, login_extra=login_extra,
                                                  process_limit=n) for p in self.protocols)
        extra = self.extra_conf
        if self.hibernate and "imap" in self.protocols:
            extra += HIBERNATE.format(client_limit=n)
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(root=self.root, port=self.port, uid=self.uid, gid=self.gid,
                                        users=users_conf, protocols=" ".join(self.protocols),
                                        process_limit=n, client_limit=max(1000, 4 * n),
                                        services=services, extra=extra))
        check = subprocess.run(["doveconf", "-c", self.conf, "-n"], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServerError(f"doveconf refused {self.conf}: {check.stderr.strip()}")
        v = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
        self.version = v.stdout.strip()

    def prepare_mail(self):
        """After the mail is written: hand the tree to the mail user."""
        if os.geteuid() == 0:
            from bench.maildata import chown_tree
            chown_tree(self.mailroot, self.uid, self.gid)

    def start(self, nofile, timeout=30):
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(self.root, "log", "stdout.log"), "ab"),
                                     stderr=subprocess.STDOUT, preexec_fn=_preexec(nofile))
        try:
            for proto in self.protocols:
                g = wait_greeting(self.ports[proto], timeout, self.proc, self.log, protocol=proto)
                if proto == self.protocols[0]:
                    self.greeting = g
        except ServerError as e:
            self.stop()
            raise ServerError(f"dovecot: {e}") from None

    def log(self):
        return (_tail(os.path.join(self.root, "log", "dovecot.log"))
                + _tail(os.path.join(self.root, "log", "stdout.log")))

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, self.proc.pid)

    def restart(self, nofile):
        """A fresh server process on the same data (each round starts with one)."""
        self.stop()
        self.proc = None
        self.start(nofile)


# --- jdmail --------------------------------------------------------------------

def _jdmail_env():
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")


def jdmail_limits(want, listeners=("imap",)):
    """INI settings that lift jdmail's connection caps (total, per IP, per user) of the
    ``listeners``' sections to ``want``: every int option whose name says it limits
    connections (``*_per_ip`` caps are lifted entirely: every client is 127.0.0.1)."""
    try:
        from jdmail.config import CORE_SCHEMA
    except Exception:       # noqa: BLE001 - an old or broken checkout: no settings
        return {}
    out = {}
    for section in (*listeners, "auth"):
        for key in CORE_SCHEMA.get(section, {}):
            k = key.lower()
            if k.startswith("max_") and ("conn" in k or "session" in k):
                out.setdefault(section, {})[key] = "0" if k.endswith("per_ip") and section in ("smtp", "pop3") \
                    else str(want)
    return out


# The workloads whose jdmail runs with [jdmail] workers = auto (--jdmail-set jdmail.workers=1
# for the single process). Not IMAP: each worker has its own loaded folders, so the big
# mailbox's steady SELECT, landing on the other worker, reads its index again, and the
# mixed load measured no better (bench/README.md); not the connections workload (memory).
WORKER_LISTENERS = {"smtp", "pop3"}


def jdmail_has_key(section, key):
    """True when this checkout's jdmail knows ``[section] key``."""
    try:
        from jdmail.config import CORE_SCHEMA
    except Exception:       # noqa: BLE001 - an old or broken checkout
        return False
    return key in CORE_SCHEMA.get(section, {})


def jdmail_version():
    """'<jdmail.__version__>, commit <hash> (<date>)' of the last commit touching jdmail/,
    plus a note when jdmail/ has uncommitted changes (the run measured those)."""
    out = ""
    try:
        import jdmail
        out = f"jdmail {getattr(jdmail, '__version__', '?')}"
    except Exception:   # noqa: BLE001
        out = "jdmail"
    try:
        git = ["git", "-C", REPO]
        last = subprocess.run(git + ["log", "-1", "--format=%h %cs", "--", "jdmail"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "jdmail"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if last:
            out += f", commit {last}" + (" + uncommitted changes in jdmail/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


class Jdmail:
    name = "jdmail"
    label = "jdmail"

    def __init__(self, root, max_connections=2000, settings=None, listeners=("imap",)):
        self.root = root
        self.listeners = tuple(listeners)
        self.ports = {}
        self.datadir = os.path.join(root, "data")
        self.mailroot = os.path.join(self.datadir, "mail")
        self.ini = os.path.join(root, "jdmail.ini")
        self.logfile = os.path.join(root, "twistd.log")
        self.max_connections = max_connections
        self.settings = settings or {}
        self.port = None
        self.proc = None
        self.version = ""

    def maildir(self, address):
        return maildir_of(self.mailroot, address)

    def write_ini(self):
        sections = {
            "jdmail": {"hostname": "mail.example.org", "datadir": self.datadir},
            "auth": {"allow_plaintext": "yes"},
        }
        for section in LISTENERS:
            sections[section] = {"listen": "tcp:0:interface=127.0.0.1" if section in self.listeners else ""}
        for section, kv in jdmail_limits(self.max_connections, self.listeners).items():
            sections.setdefault(section, {}).update(kv)
        if set(self.listeners) & WORKER_LISTENERS:
            # on every core, as Postfix and Dovecot run a process per session
            if jdmail_has_key("jdmail", "workers"):
                sections["jdmail"]["workers"] = "auto"
            elif "smtp" in self.listeners and jdmail_has_key("smtp", "workers"):    # an older checkout
                sections.setdefault("smtp", {})["workers"] = "auto"
        for section, kv in self.settings.items():
            sections.setdefault(section, {}).update(kv)
        with open(self.ini, "w") as f:
            f.write("; generated by jdmail's bench/ for a private instance on loopback\n")
            for s, kv in sections.items():
                f.write(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) + "\n")

    def setup(self, users):
        """``users``: [(address, '{SCHEME}hash')], written through jdmail's directory API."""
        os.makedirs(self.mailroot, exist_ok=True)
        self.write_ini()
        code = (
            "import json, sys\n"
            "from jdmail.admin.ctl import open_directory\n"
            "users = json.load(sys.stdin)\n"
            "d = open_directory(sys.argv[1])\n"
            "for dom in sorted({a.split('@')[1] for a, _ in users}):\n"
            "    d.add_domain(dom)\n"
            "for a, h in users:\n"
            "    d.add_user(a, h, 0)\n"
            "getattr(d, 'close', lambda: None)()\n")
        p = subprocess.run([sys.executable, "-c", code, self.ini], input=json.dumps(users), text=True,
                           capture_output=True, env=_jdmail_env(), cwd=self.root)
        if p.returncode != 0:
            raise ServerError(f"jdmail: adding users failed: {p.stderr.strip()[-2000:]}")
        self.version = jdmail_version()

    def prepare_mail(self):
        pass

    def start(self, nofile, timeout=60):
        state = os.path.join(self.datadir, "run", "listening.json")
        if os.path.exists(state):
            os.unlink(state)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logfile", self.logfile, "jdmail", "--config", self.ini],
            cwd=self.root, env=_jdmail_env(), stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.root, "stdout.log"), "ab"), stderr=subprocess.STDOUT,
            preexec_fn=_preexec(nofile))
        deadline = time.monotonic() + timeout
        table = None
        while time.monotonic() < deadline:
            if os.path.exists(state):
                try:
                    with open(state) as f:
                        table = json.load(f)
                    break
                except ValueError:
                    pass
            if self.proc.poll() is not None:
                raise ServerError(f"jdmail exited with status {self.proc.returncode}\n{self.log()}")
            time.sleep(0.05)
        if table is None:
            self.stop()
            raise ServerError(f"jdmail did not start listening in {timeout}s\n{self.log()}")
        for section in self.listeners:
            if section not in table:
                log = self.log()
                self.stop()
                if "IMAP is not served" in log or "not served" in log:
                    raise NotServed(f"jdmail: {section.upper()} not served")
                raise ServerError(f"jdmail runs but does not listen on [{section}]\n{log}")
            self.ports[section] = int(str(table[section][0]).rsplit(":", 1)[1])
        self.port = self.ports[self.listeners[0]]
        try:
            for section in self.listeners:
                g = wait_greeting(self.ports[section], timeout, self.proc, self.log,
                                  protocol="smtp" if section in ("smtp", "submission") else section)
                if section == self.listeners[0]:
                    self.greeting = g
        except ServerError as e:
            self.stop()
            raise ServerError(f"jdmail: {e}") from None

    def log(self):
        return _tail(self.logfile) + _tail(os.path.join(self.root, "stdout.log"))

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, self.proc.pid)

    def restart(self, nofile):
        """A fresh server process on the same data (each round starts with one)."""
        self.stop()
        self.proc = None
        self.start(nofile)
