"""jdmailctl, run as the admin runs it: a subprocess with a real INI file."""

import io
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from jdmail.admin import ctl
from jdmail.directory.sqlite import SQLiteDirectory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CtlTestCase(TestCase):

    def setUp(self):
        self.datadir = os.path.abspath(self.mktemp())
        self.ini = os.path.abspath(self.mktemp())
        with open(self.ini, "w") as f:
            f.write(f"[jdmail]\ndatadir = {self.datadir}\n")
        self.db = os.path.join(self.datadir, "directory.sqlite")

    def ctl(self, *args, stdin="", config=True, env=None):
        """Run jdmailctl; returns (exit status, stdout, stderr)."""
        environ = {k: v for k, v in os.environ.items() if k != "JDMAIL_CONFIG"}
        environ["PYTHONPATH"] = ROOT + os.pathsep + environ.get("PYTHONPATH", "")
        environ.update(env or {})
        command = [sys.executable, "-m", "jdmail.admin.ctl"]
        if config:
            command += ["--config", self.ini]
        done = subprocess.run(command + list(args), input=stdin, capture_output=True, text=True,
                              cwd=ROOT, env=environ, timeout=60)
        return done.returncode, done.stdout, done.stderr

    def assertRefused(self, result, text, status=1):
        code, out, err = result
        self.assertEqual(code, status, err)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("jdmailctl: "), err)
        self.assertIn(text, err)
        self.assertNotIn("Traceback", err)

    def directory(self):
        d = SQLiteDirectory(self.db)
        self.addCleanup(d.close)
        return d


class DomainTests(CtlTestCase):

    def test_add_list_remove(self):
        self.assertEqual(self.ctl("domain", "add", "Example.ORG"), (0, "added domain example.org\n", ""))
        self.assertEqual(self.ctl("domain", "add", "example.net")[0], 0)
        self.assertEqual(self.ctl("domain", "list"), (0, "example.net\nexample.org\n", ""))
        self.assertEqual(self.directory().list_domains(), ["example.net", "example.org"])
        self.assertEqual(self.ctl("domain", "remove", "example.net"), (0, "removed domain example.net\n", ""))
        self.assertEqual(self.directory().list_domains(), ["example.org"])

    def test_duplicate_and_invalid(self):
        self.ctl("domain", "add", "example.org")
        self.assertRefused(self.ctl("domain", "add", "example.org"), "example.org is already a local domain")
        self.assertRefused(self.ctl("domain", "add", "not a domain"), "is not a valid domain name")
        self.assertRefused(self.ctl("domain", "remove", "example.com"), "example.com is not a local domain")

    def test_remove_in_use(self):
        self.ctl("domain", "add", "example.org")
        self.ctl("user", "add", "bob@example.org", "--password", "pw")
        self.assertRefused(self.ctl("domain", "remove", "example.org"),
                           "example.org still has 1 user; remove them first")
        self.assertEqual(self.directory().list_domains(), ["example.org"])


class UserTests(CtlTestCase):

    def setUp(self):
        super().setUp()
        self.assertEqual(self.ctl("domain", "add", "example.org")[0], 0)

    async def test_added_user_authenticates(self):
        result = self.ctl("user", "add", "Bob@Example.org", "--password", "s3cret", "--quota", "2M")
        self.assertEqual(result, (0, "added user bob@example.org\n", ""))
        directory = self.directory()
        self.assertEqual(directory.list_users(), [("bob@example.org", 2 * 1024**2, True)])
        account = await directory.authenticate("bob@example.org", "s3cret")
        self.assertEqual((account.name, account.mailbox), ("bob@example.org", "example.org/bob"))
        self.assertIsNone(await directory.authenticate("bob@example.org", "wrong"))
        stored = directory.get_user("bob@example.org").password
        self.assertTrue(stored.startswith("{BLF-CRYPT}$2y$10$"), stored)

    async def test_password_from_stdin_and_passwd(self):
        self.assertEqual(self.ctl("user", "add", "carol@example.org", stdin="first pass\n")[0], 0)
        directory = self.directory()
        self.assertIsNotNone(await directory.authenticate("carol@example.org", "first pass"))
        result = self.ctl("user", "passwd", "carol@example.org", "--scheme", "argon2id", stdin="second\r\n")
        self.assertEqual(result, (0, "changed the password of carol@example.org\n", ""))
        self.assertIsNone(await directory.authenticate("carol@example.org", "first pass"))
        self.assertIsNotNone(await directory.authenticate("carol@example.org", "second"))
        self.assertTrue(directory.get_user("carol@example.org").password.startswith("{ARGON2ID}$argon2id$"))

    def test_refusals(self):
        self.ctl("user", "add", "bob@example.org", "--password", "pw")
        self.assertRefused(self.ctl("user", "add", "BOB@example.org", "--password", "x"),
                           "bob@example.org is already a user")
        self.assertRefused(self.ctl("user", "add", "x@example.com", "--password", "x"),
                           "example.com is not a local domain")
        self.assertRefused(self.ctl("user", "add", "bad@@example.org", "--password", "x"),
                           "jdmailctl: bad address: ")
        self.assertRefused(self.ctl("user", "add", "a/b@example.org", "--password", "x"),
                           "cannot be a mailbox")
        self.assertRefused(self.ctl("user", "add", "e@example.org", stdin="\n"), "the password is empty")
        self.assertRefused(self.ctl("user", "add", "q@example.org", "--password", "x", "--quota", "lots"),
                           "expected a size")
        self.assertRefused(self.ctl("user", "passwd", "nobody@example.org", "--password", "x"),
                           "nobody@example.org is not a user")
        self.assertRefused(self.ctl("user", "remove", "nobody@example.org"), "is not a user")
        self.assertEqual([u[0] for u in self.directory().list_users()], ["bob@example.org"])

    def test_list_and_remove(self):
        self.ctl("domain", "add", "example.net")
        self.ctl("user", "add", "bob@example.org", "--password", "pw", "--quota", "1K")
        self.ctl("user", "add", "dave@example.net", "--password", "pw")
        self.assertEqual(self.ctl("user", "list"),
                         (0, "bob@example.org 1024 enabled\ndave@example.net 0 enabled\n", ""))
        self.assertEqual(self.ctl("user", "list", "example.net"), (0, "dave@example.net 0 enabled\n", ""))
        code, out, _ = self.ctl("user", "remove", "Bob@example.org")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("removed user bob@example.org"))
        self.assertEqual(self.directory().list_users(), [("dave@example.net", 0, True)])


class AliasTests(CtlTestCase):

    def setUp(self):
        super().setUp()
        self.ctl("domain", "add", "example.org")
        self.ctl("user", "add", "bob@example.org", "--password", "pw")

    async def test_add_list_remove(self):
        self.assertEqual(self.ctl("alias", "add", "team@example.org", "bob@example.org", "me@elsewhere.com"),
                         (0, "added alias team@example.org -> bob@example.org, me@elsewhere.com\n", ""))
        self.assertEqual(self.ctl("alias", "add", "@example.com", "@example.org")[0], 0)
        self.assertEqual(self.ctl("alias", "add", "*@example.org", "bob@example.org")[0], 0)
        self.assertEqual(self.ctl("alias", "list", "example.org"),
                         (0, "*@example.org bob@example.org\nteam@example.org bob@example.org\n"
                             "team@example.org me@elsewhere.com\n", ""))
        r = await self.directory().resolve("team@example.com")
        self.assertEqual((r.mailboxes, r.remote), (("example.org/bob",), ("me@elsewhere.com",)))
        self.assertEqual(self.ctl("alias", "remove", "team@example.org", "me@elsewhere.com"),
                         (0, "removed alias team@example.org -> me@elsewhere.com\n", ""))
        self.assertEqual(self.ctl("alias", "remove", "*@example.org"), (0, "removed alias *@example.org\n", ""))
        self.assertEqual(self.directory().list_aliases(),
                         [("@example.com", "@example.org"), ("team@example.org", "bob@example.org")])

    def test_refusals(self):
        self.assertRefused(self.ctl("alias", "add", "x@example.com", "bob@example.org"),
                           "example.com is not a local domain")
        self.assertRefused(self.ctl("alias", "add", "@example.org", "@example.org"),
                           "example.org is a local domain, so it cannot be a domain alias")
        self.assertRefused(self.ctl("alias", "remove", "nothing@example.org"), "is not an alias")
        self.assertEqual(self.directory().list_aliases(), [])


class ConfigTests(CtlTestCase):

    def test_config_errors(self):
        with open(self.ini, "a") as f:
            f.write("bogus = 1\n[directory]\nfoo = 2\n")
        code, out, err = self.ctl("domain", "list")
        self.assertEqual((code, out), (2, ""))
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)
        self.assertTrue(all(line.startswith(f"jdmailctl: {self.ini}: [") for line in lines), err)
        self.assertIn("[jdmail] bogus is not a known key", lines[0])
        self.assertIn("[directory] foo is not a known key", lines[1])
        self.assertFalse(os.path.exists(self.db))

    def test_missing_config(self):
        self.ini = os.path.abspath(self.mktemp())
        self.assertRefused(self.ctl("domain", "list"), "does not exist", status=2)

    def test_config_from_environment(self):
        code, out, err = self.ctl("domain", "add", "example.org", config=False,
                                  env={"JDMAIL_CONFIG": self.ini})
        self.assertEqual((code, out, err), (0, "added domain example.org\n", ""))
        self.assertEqual(self.directory().list_domains(), ["example.org"])

    def test_directory_path_option(self):
        other = os.path.join(os.path.abspath(self.mktemp()), "users.sqlite")
        with open(self.ini, "a") as f:
            f.write(f"[directory]\ntype = sqlite\npath = {other}\n")
        self.assertEqual(self.ctl("domain", "add", "example.org")[0], 0)
        self.assertFalse(os.path.exists(self.db))
        d = SQLiteDirectory(other)
        self.addCleanup(d.close)
        self.assertEqual(d.list_domains(), ["example.org"])

    def test_usage_error(self):
        code, out, err = self.ctl("user", "frobnicate")
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)


class ReadPasswordTests(TestCase):
    """The tty prompt, in-process (a subprocess has no terminal)."""

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    def test_prompt_twice(self):
        answers = iter(["pw", "pw"])
        self.patch(ctl.getpass, "getpass", lambda prompt: next(answers))
        self.assertEqual(ctl.read_password(None, self.FakeTTY()), "pw")

    def test_prompt_mismatch(self):
        answers = iter(["pw", "px"])
        self.patch(ctl.getpass, "getpass", lambda prompt: next(answers))
        e = self.assertRaises(ctl.CtlError, ctl.read_password, None, self.FakeTTY())
        self.assertEqual(str(e), "the two passwords differ")

    def test_given_wins(self):
        self.assertEqual(ctl.read_password("given", io.StringIO("ignored\n")), "given")

    def test_stdin_line(self):
        self.assertEqual(ctl.read_password(None, io.StringIO("one line\nsecond\n")), "one line")


class PluginsCommandTests(TestCase):
    def test_lists_builtins_with_origin_and_options(self):
        from tests.fixtures.server import env
        p = subprocess.run([sys.executable, "-m", "jdmail.admin.ctl", "plugins"], capture_output=True,
                           text=True, env=env())
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("directory sqlite  (", p.stdout)
        self.assertIn("jdmail/directory/sqlite.py)", p.stdout)
        self.assertIn("store maildir  (", p.stdout)
        self.assertIn("    path (string, default ''): root of the mail tree", p.stdout)


class AccountSettingsTests(CtlTestCase):
    """user show/set, domain set/show, group ...: the issue 5 commands."""

    def setUp(self):
        super().setUp()
        d = self.directory()
        d.add_domain("example.org")
        d.add_user("bob@example.org", "{PLAIN}pw", 2048)

    def test_user_set_and_show(self):
        self.assertEqual(self.ctl("domain", "set", "example.org", "--quota", "1M", "--quota-messages", "50"),
                         (0, "changed domain example.org\n", ""))
        self.assertEqual(self.ctl("domain", "show", "example.org"),
                         (0, "domain: example.org\ndefault quota: 1048576 bytes\n"
                             "default quota_messages: 50 messages\n", ""))
        self.assertEqual(self.ctl("user", "set", "Bob@example.org", "--quota-messages", "7", "--disable",
                                  "--protocols", "imap,POP3", "--forward", "a@remote.test, b@remote.test",
                                  "--no-keep-copy"),
                         (0, "changed user bob@example.org\n", ""))
        maildir = os.path.join(self.datadir, "mail", "example.org", "bob", "Maildir")
        for sub, name, size in (("new", "1.a.host", 10), ("cur", "2.b.host:2,S", 20),
                                (".Sent/cur", "3.c.host:2,S", 30)):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
            with open(os.path.join(maildir, sub, name), "wb") as f:
                f.write(b"x" * size)
        os.makedirs(os.path.join(maildir, ".Sent", "new"), exist_ok=True)
        self.assertEqual(self.ctl("user", "show", "bob@example.org"), (0, (
            "address: bob@example.org\nenabled: no\nprotocols: imap, pop3\n"
            "quota: 2048 bytes (the user's own)\nquota_messages: 7 messages (the user's own)\n"
            "usage: 60 bytes, 3 messages\n"
            "forward: a@remote.test, b@remote.test (no copy is kept)\nmailbox: example.org/bob\n"), ""))
        self.ctl("user", "set", "bob@example.org", "--quota", "0", "--quota-messages", "0", "--enable",
                 "--forward", "", "--protocols", "")
        show = self.ctl("user", "show", "bob@example.org")[1]
        self.assertIn("enabled: yes\nprotocols: none\nquota: 1048576 bytes (domain default)\n"
                      "quota_messages: 50 messages (domain default)\n", show)
        self.assertIn("forward: none\n", show)

    def test_user_add_with_message_quota(self):
        self.assertEqual(self.ctl("user", "add", "carol@example.org", "--password", "pw", "--quota-messages", "9"),
                         (0, "added user carol@example.org\n", ""))
        self.assertEqual(self.directory().get_user("carol@example.org").quota_messages, 9)

    def test_user_set_refusals(self):
        self.assertRefused(self.ctl("user", "set", "bob@example.org"), "nothing to change", status=2)
        self.assertRefused(self.ctl("user", "set", "bob@example.org", "--protocols", "ftp"),
                           "unknown protocol 'ftp' (use imap, pop3, smtp)")
        self.assertRefused(self.ctl("user", "set", "bob@example.org", "--quota", "lots"), "--quota 'lots'")
        self.assertRefused(self.ctl("user", "set", "nobody@example.org", "--enable"),
                           "nobody@example.org is not a user")
        self.assertRefused(self.ctl("user", "show", "nobody@example.org"), "nobody@example.org is not a user")

    def test_groups(self):
        self.assertEqual(self.ctl("group", "add", "staff@example.org", "bob@example.org", "x@remote.test",
                                  "--members-only"),
                         (0, "added group staff@example.org with 2 member(s)\n", ""))
        self.assertEqual(self.ctl("group", "member", "add", "staff@example.org", "carol@example.org"),
                         (0, "added member carol@example.org to staff@example.org\n", ""))
        self.assertEqual(self.ctl("group", "sender", "add", "staff@example.org", "@partner.test"),
                         (0, "added allowed sender @partner.test to staff@example.org\n", ""))
        self.assertEqual(self.ctl("group", "list"), (0, "staff@example.org 3 members-only\n", ""))
        self.assertEqual(self.ctl("group", "show", "staff@example.org"), (0, (
            "group: staff@example.org\nposting: members and allowed senders only\n"
            "member: bob@example.org\nmember: carol@example.org\nmember: x@remote.test\n"
            "sender: @partner.test\n"), ""))
        self.assertEqual(self.ctl("group", "set", "staff@example.org", "--anyone"),
                         (0, "staff@example.org: anyone may post\n", ""))
        self.assertFalse(self.directory().get_group("staff@example.org").members_only)
        self.assertRefused(self.ctl("group", "add", "bob@example.org"), "bob@example.org is already a user")
        self.assertRefused(self.ctl("group", "member", "remove", "staff@example.org", "z@example.org"),
                           "z@example.org is not a member of staff@example.org")
        self.assertEqual(self.ctl("group", "remove", "staff@example.org"),
                         (0, "removed group staff@example.org\n", ""))
        self.assertEqual(self.directory().list_groups(), [])
