"""A private Postfix instance for the benchmark: its own config_directory,
queue_directory and data_directory under the run's temp dir, a log file there
(postlogd), and one smtpd listening on a loopback port through its own master.cf.
The system's Postfix (its /etc/postfix, its queue, its master) is never read,
started or stopped: ``master -c <dir> -d`` runs in the foreground as our child.

Two roles:

* inbound (``domains`` given): local users of those domains get mail in
  ``<root>/mail/<domain>/<user>/Maildir/`` through virtual(8) with
  ``virtual_mailbox_maps``; Postfix's durable defaults are kept (cleanup fsyncs
  the queue file before the 250, virtual(8) fsyncs the Maildir file).
* relay (``relayhost`` given): everything from 127.0.0.0/8 goes to that host.
"""

import os
import re
import shutil
import subprocess
import time

from bench import servers

DAEMONS = "/usr/lib/postfix/sbin"
MASTER_CF = """\
# private master.cf for jdmail's bench/: no chroot, one smtpd on a loopback port
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
# private main.cf for jdmail's bench/ (see bench/postfix.py)
compatibility_level = 3.6
config_directory = {root}/conf
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/log/postfix.log
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
smtp_dns_support_level = disabled
default_process_limit = {process_limit}
smtpd_client_connection_count_limit = 0
"""


class Postfix:
    name = "postfix"
    label = "Postfix"

    def __init__(self, root, domains=(), relayhost=None, settings=None, process_limit=100):
        self.root = root
        self.conf = os.path.join(root, "conf")
        self.queue = os.path.join(root, "queue")
        self.mailroot = os.path.join(root, "mail")
        self.logfile = os.path.join(root, "log", "postfix.log")
        self.domains = list(domains)
        self.relayhost = relayhost
        self.settings = dict(settings or {})
        self.process_limit = process_limit
        self.uid, self.gid, _ = servers.mail_owner()
        self.port = None
        self.ports = {}
        self.proc = None
        self.version = ""

    @staticmethod
    def missing():
        return [] if os.path.exists(os.path.join(DAEMONS, "master")) else ["postfix"]

    def maildir(self, address):
        return servers.maildir_of(self.mailroot, address)

    def env(self):
        return dict(os.environ, MAIL_CONFIG=self.conf)

    def postconf(self, *settings):
        subprocess.run(["postconf", "-c", self.conf, "-e", *settings], check=True, capture_output=True)

    def setup(self, users=()):
        """``users``: addresses that get a Maildir (inbound role)."""
        if os.geteuid() != 0:
            raise servers.ServerError("postfix: the private Postfix needs root (its master runs as root)")
        for d in ("conf", "queue", "data", "log", "mail"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        os.chmod(self.root, 0o755)
        shutil.chown(os.path.join(self.root, "data"), "postfix")
        self.port = servers.free_port()
        self.ports = {"smtp": self.port}
        main = MAIN_CF.format(root=self.root, process_limit=self.process_limit)
        if self.domains:
            vmap = os.path.join(self.conf, "vmailbox")
            with open(vmap, "w") as f:
                for a in users:
                    local, domain = a.lower().split("@")
                    f.write(f"{a.lower()} {domain}/{local}/Maildir/\n")
            main += (f"virtual_mailbox_domains = {', '.join(self.domains)}\n"
                     f"virtual_mailbox_base = {self.mailroot}\n"
                     f"virtual_mailbox_maps = texthash:{vmap}\n"
                     f"virtual_uid_maps = static:{self.uid}\nvirtual_gid_maps = static:{self.gid}\n"
                     "virtual_minimum_uid = 1\n")
            os.chown(self.mailroot, self.uid, self.gid)
        if self.relayhost:
            main += f"relayhost = {self.relayhost}\n"
        main += "".join(f"{k} = {v}\n" for k, v in self.settings.items())
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        check = subprocess.run(["postfix", "-c", self.conf, "check"], capture_output=True, text=True,
                               env=self.env())
        if check.returncode != 0:
            raise servers.ServerError(f"postfix check failed for {self.conf}: {check.stderr.strip()}\n{self.log()}")
        self.version = "Postfix " + subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                                                   text=True).stdout.strip()

    def start(self, nofile, timeout=30):
        self.proc = subprocess.Popen([os.path.join(DAEMONS, "master"), "-c", self.conf, "-d"],
                                     stdin=subprocess.DEVNULL, env=self.env(),
                                     stdout=open(os.path.join(self.root, "log", "master.out"), "ab"),
                                     stderr=subprocess.STDOUT, preexec_fn=servers._preexec(nofile))
        try:
            self.greeting = servers.wait_greeting(self.port, timeout, self.proc, self.log, protocol="smtp")
        except servers.ServerError as e:
            self.stop()
            raise servers.ServerError(f"postfix: {e}") from None

    def log(self):
        return servers._tail(self.logfile) + servers._tail(os.path.join(self.root, "log", "master.out"))

    def pid(self):
        return self.proc.pid

    def queued(self):
        """Messages in the queue (incoming, active, deferred, hold, maildrop)."""
        n = 0
        for d in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _dirpath, _dirs, files in os.walk(os.path.join(self.queue, d)):
                n += len(files)
        return n

    def flush(self):
        subprocess.run(["postqueue", "-c", self.conf, "-f"], check=True, capture_output=True, env=self.env())

    def stop(self):
        if self.proc is not None:
            servers.stop_process(self.proc, self.proc.pid)
            self.proc = None

    def restart(self, nofile):
        self.stop()
        # a master killed hard leaves its pid file; a clean stop removes it
        self.start(nofile)


def wait_until(predicate, timeout, interval=0.05):
    """Poll ``predicate`` until true or ``timeout`` seconds; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


class SmtpSink:
    """Postfix's smtp-sink on a loopback port: accepts every message and stores
    nothing (the no-storage ceiling, and the receiver of the queue workload)."""

    name = "smtp-sink"
    label = "smtp-sink"

    def __init__(self, root, backlog=256):
        self.root = root
        self.backlog = backlog
        self.port = None
        self.ports = {}
        self.proc = None
        self.version = "Postfix smtp-sink"

    @staticmethod
    def missing():
        return [] if shutil.which("smtp-sink") else ["postfix"]

    def setup(self, users=()):
        os.makedirs(self.root, exist_ok=True)
        self.port = servers.free_port()
        self.ports = {"smtp": self.port}

    def start(self, nofile, timeout=15):
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.log_path = os.path.join(self.root, f"sink-{time.monotonic_ns()}.log")
        self.proc = subprocess.Popen(["smtp-sink", *user, "-c", "-h", "sink.bench.test", f"127.0.0.1:{self.port}",
                                      str(self.backlog)],
                                     stdin=subprocess.DEVNULL, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, preexec_fn=servers._preexec(nofile))
        try:
            self.greeting = servers.wait_greeting(self.port, timeout, self.proc, self.log, protocol="smtp")
        except servers.ServerError as e:
            self.stop()
            raise servers.ServerError(f"smtp-sink: {e}") from None

    def log(self):
        return servers._tail(self.log_path)

    def received(self):
        """Messages received since this process started (smtp-sink -c's counter)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 200))
                tail = f.read()
        except OSError:
            return 0
        found = re.findall(rb"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            servers.stop_process(self.proc, self.proc.pid)
            self.proc = None

    def restart(self, nofile):
        self.stop()
        self.start(nofile)
