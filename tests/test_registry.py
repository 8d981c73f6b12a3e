"""jdmail.registry: built-ins register like third-party plugins; a dropped-in filter
(tests/dropins/example_filter.py) is found through ``[jdmail] plugin_dirs`` and
configured purely through the INI; unknown kinds and broken plugins give one line."""

import asyncio
import email.parser
import email.policy
import os
import re
import smtplib
import subprocess
import sys
import tempfile
import textwrap

from twisted.plugin import getPlugins
from twisted.trial import unittest
from zope.interface.verify import verifyObject

import jdmail.plugins
from jdmail import config, registry
from jdmail.errors import ConfigErrors
from jdmail.interfaces import Action, IFilter, Stage
from jdmail.options import Option
from tests.fixtures.server import REPO, env, running_server

DROPINS = os.path.join(REPO, "tests", "dropins")
BUILTINS = {"directory": {"sqlite"}, "store": {"maildir"}}
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


class _Txn:
    """What a DATA-stage filter sees: ``headers`` is an email.message.Message."""

    def __init__(self, header_text):
        self.headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_text)


class RegistryTestMixin:
    def write_ini(self, text):
        fd, path = tempfile.mkstemp(suffix=".ini", prefix="jdmail-registry-")
        with os.fdopen(fd, "w") as f:
            f.write(textwrap.dedent(text))
        self.addCleanup(os.unlink, path)
        return path

    def use_plugin_dir(self, path):
        """config.load will add ``path``; forget it (and its modules) after the test."""
        self.addCleanup(registry.remove_plugin_dirs, [path])

    def plugin_dir(self, **modules):
        """A temporary plugin directory holding ``name=source`` modules."""
        d = tempfile.mkdtemp(prefix="jdmail-plugins-")
        for name, source in modules.items():
            with open(os.path.join(d, name + ".py"), "w") as f:
                f.write(textwrap.dedent(source))
        self.use_plugin_dir(d)
        return d

    def load_errors(self, path):
        with self.assertRaises(ConfigErrors) as cm:
            config.load(path)
        return [str(e) for e in cm.exception.errors]


class BuiltinsTests(RegistryTestMixin, unittest.TestCase):

    def test_every_builtin_found_and_verified(self):
        for kind, names in BUILTINS.items():
            found = registry.factories(kind)
            self.assertTrue(names <= set(found), f"{kind}: {sorted(found)}")
            iface = registry.KINDS[kind]
            for name, factory in found.items():
                self.assertTrue(verifyObject(iface, factory))
                self.assertEqual(factory.kind, name)
                self.assertIsInstance(factory.description, str)
                self.assertTrue(factory.description)
                for key, option in factory.options.items():
                    self.assertRegex(key, r"^[a-z][a-z0-9_]*$")
                    self.assertIsInstance(option, Option)

    def test_every_provider_in_the_builtin_module_is_registered(self):
        """Each module-level factory instance in jdmail_builtins is indexed under its kind."""
        from jdmail.plugins import jdmail_builtins
        indexed = {id(f) for kind in registry.KINDS for f in registry.factories(kind).values()}
        providers = [v for v in vars(jdmail_builtins).values()
                     if any(iface.providedBy(v) for iface in registry.KINDS.values())]
        self.assertTrue(providers)
        for provider in providers:
            self.assertIn(id(provider), indexed, provider)

    def test_getplugins_finds_them_directly(self):
        """The registry adds nothing Twisted's own getPlugins would not find."""
        for kind, iface in registry.KINDS.items():
            names = {p.kind for p in getPlugins(iface, jdmail.plugins)}
            self.assertTrue(BUILTINS.get(kind, set()) <= names)

    def test_no_problems_in_the_shipped_tree(self):
        self.assertEqual(registry.problems(), [])

    def test_find_unknown_is_none(self):
        self.assertIsNone(registry.find("filter", "no_such_filter_kind"))
        self.assertIsNone(registry.find("directory", "no_such_directory"))


class DropinTests(RegistryTestMixin, unittest.TestCase):

    def dropin_ini(self, words="lottery, Viagra"):
        self.use_plugin_dir(DROPINS)
        return self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {DROPINS}
            [filters]
            chain = subject_words
            [filter:subject_words]
            words = {words}
            """)

    def test_found_through_plugin_dirs(self):
        cfg = config.load(self.dropin_ini())
        factory, settings = cfg.components["filter:subject_words"]
        self.assertEqual(factory.kind, "subject_words")
        self.assertEqual(os.path.realpath(registry._origin(factory)),
                         os.path.realpath(os.path.join(DROPINS, "example_filter.py")))
        self.assertEqual(settings["words"], ["lottery", "Viagra"])
        self.assertEqual(cfg["filters"]["chain"], ["subject_words"])
        self.assertIs(registry.find("filter", "subject_words"), factory)

    def test_configured_filter_gives_verdicts(self):
        cfg = config.load(self.dropin_ini())
        factory, settings = cfg.components["filter:subject_words"]
        flt = factory.build("subject_words", settings, None)
        self.assertTrue(verifyObject(IFilter, flt))
        self.assertEqual(flt.stages, frozenset({Stage.DATA}))
        spam = asyncio.run(flt.check(Stage.DATA, _Txn(b"Subject: Cheap VIAGRA here\r\n\r\n")))
        self.assertEqual((spam.action, spam.code, spam.enhanced, spam.text),
                         (Action.REJECT, 550, "5.7.1", "Message content rejected"))
        self.assertEqual(spam.reason, "subject contains 'viagra'")
        ham = asyncio.run(flt.check(Stage.DATA, _Txn(b"Subject: minutes of the meeting\r\n\r\n")))
        self.assertEqual(ham.action, Action.CONTINUE)
        none = asyncio.run(flt.check(Stage.DATA, _Txn(b"From: a@b.example\r\n\r\n")))
        self.assertEqual(none.action, Action.CONTINUE)

    def test_required_option_missing_is_one_line(self):
        self.use_plugin_dir(DROPINS)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {DROPINS}
            [filters]
            chain = subject_words
            [filter:subject_words]
            """)
        self.assertEqual(self.load_errors(path),
                         [f"{path}: [filter:subject_words] words is required "
                          "(comma-separated, case-insensitive)"])

    def test_unknown_option_of_the_dropin(self):
        self.use_plugin_dir(DROPINS)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {DROPINS}
            [filter:subject_words]
            words = x
            phrases = y
            """)
        self.assertEqual(self.load_errors(path),
                         [f"{path}: [filter:subject_words] phrases is not a known key "
                          "(allowed here: on_error, quarantine, timeout, type, words)"])

    def test_second_instance_via_type(self):
        self.use_plugin_dir(DROPINS)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {DROPINS}
            [filters]
            chain = casino, subject_words
            [filter:subject_words]
            words = lottery
            [filter:casino]
            type = subject_words
            words = casino, poker
            on_error = continue
            """)
        cfg = config.load(path)
        self.assertEqual(cfg.components["filter:casino"][1]["words"], ["casino", "poker"])
        self.assertEqual(cfg.components["filter:casino"][1]["on_error"], "continue")
        self.assertIs(cfg.components["filter:casino"][0], cfg.components["filter:subject_words"][0])

    def test_readme_example_is_the_dropin(self):
        """README's "Writing a filter plugin" code is exactly tests/dropins/example_filter.py."""
        with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
            readme = f.read()
        m = re.search(r"\n    # acme_subject\.py\n(.*?)\n\S", readme, re.S)
        self.assertIsNotNone(m, "README.rst has no '# acme_subject.py' example")
        example = textwrap.dedent(m.group(1)).strip().splitlines()
        with open(os.path.join(DROPINS, "example_filter.py"), encoding="utf-8") as f:
            code = [line for line in f.read().splitlines() if not line.startswith("#")]
        strip = [re.sub(r"\s*#.*$", "", line).rstrip() for line in example if line.strip()]
        self.assertEqual(strip, [re.sub(r"\s*#.*$", "", line).rstrip() for line in code if line.strip()])


class UnknownAndBrokenTests(RegistryTestMixin, unittest.TestCase):

    def test_unknown_filter_kind_lists_available(self):
        self.use_plugin_dir(DROPINS)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {DROPINS}
            [filters]
            chain = sophos
            [filter:sophos]
            socket = /run/sophos.ctl
            """)
        errors = self.load_errors(path)
        available = ", ".join(sorted(registry.factories("filter")))
        self.assertIn("subject_words", available)
        self.assertEqual(errors,
                         [f"{path}: [filter:sophos] 'sophos': no filter plugin has that name "
                          f"(available: {available})"])

    def test_unknown_type_names_the_type_key(self):
        path = self.write_ini("""\
            [filter:spam]
            type = rspamd
            """)
        errors = self.load_errors(path)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith(f"{path}: [filter:spam] type 'rspamd': no filter plugin "
                                             "has that name (available: "), errors[0])

    def test_unknown_directory_type_lists_available(self):
        path = self.write_ini("""\
            [directory]
            type = openldap
            """)
        self.assertEqual(self.load_errors(path),
                         [f"{path}: [directory] type 'openldap': no directory plugin has that name "
                          "(available: ldap, mysql, sqlite)"])

    def test_broken_plugin_is_named(self):
        d = self.plugin_dir(jdmail_test_broken_syntax="""\
            def broken(:
                pass
            """)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {d}
            [filters]
            chain = broken
            [filter:broken]
            """)
        errors = self.load_errors(path)
        self.assertEqual(len(errors), 1)
        broken = os.path.join(d, "jdmail_test_broken_syntax.py")
        self.assertIn("[filter:broken] 'broken': no filter plugin has that name (available: ", errors[0])
        self.assertIn(f"; plugins that failed to load: {broken}: SyntaxError: ", errors[0])
        self.assertEqual(registry.problems()[0].split(": SyntaxError")[0], broken)
        self.assertEqual(len(registry.problems()), 1)

    def test_broken_import_is_named_by_its_own_file(self):
        d = self.plugin_dir(jdmail_test_broken_import="""\
            import jdmail_no_such_module_anywhere
            """)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {d}
            [filter:x]
            """)
        errors = self.load_errors(path)
        self.assertIn(f"{os.path.join(d, 'jdmail_test_broken_import.py')}: ModuleNotFoundError: "
                      "No module named 'jdmail_no_such_module_anywhere'", errors[0])

    def test_factory_that_does_not_verify(self):
        d = self.plugin_dir(jdmail_test_unverified="""\
            from zope.interface import implementer
            from jdmail.interfaces import IFilterFactory

            @implementer(IFilterFactory)
            class NoBuild:
                kind = "nobuild"
                description = "lacks build()"
                options = {}

            nobuild = NoBuild()
            """)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {d}
            [filter:nobuild]
            """)
        errors = self.load_errors(path)
        self.assertEqual(len(errors), 1)
        self.assertIn("'nobuild': no filter plugin has that name", errors[0])
        self.assertIn(f"{os.path.join(d, 'jdmail_test_unverified.py')}: does not provide IFilterFactory: ",
                      errors[0])
        self.assertIn("build", errors[0])
        self.assertNotIn("\n", errors[0])

    def test_duplicate_kind_is_one_line(self):
        d = self.plugin_dir(jdmail_test_duplicate="""\
            from zope.interface import implementer
            from jdmail.interfaces import IStoreFactory

            @implementer(IStoreFactory)
            class AnotherMaildir:
                kind = "maildir"
                description = "claims a built-in name"
                options = {}
                def build(self, name, settings, services):
                    return None

            another = AnotherMaildir()
            """)
        path = self.write_ini(f"""\
            [jdmail]
            plugin_dirs = {d}
            """)
        errors = self.load_errors(path)
        self.assertEqual(len(errors), 1)
        self.assertRegex(errors[0], rf"^{re.escape(path)}: \[jdmail\] plugin_dirs two store plugins are "
                                    r"named 'maildir': \S+ and \S+jdmail_test_duplicate\.py$")

    def test_missing_plugin_dir(self):
        path = self.write_ini("""\
            [jdmail]
            plugin_dirs = /nonexistent/jdmail-plugins
            """)
        self.assertEqual(self.load_errors(path),
                         [f"{path}: [jdmail] plugin_dirs '/nonexistent/jdmail-plugins': no such directory"])

    def test_twistd_names_broken_plugin_without_traceback(self):
        """Through twistd: one line on stderr, exit 1, no traceback from twisted.plugin."""
        d = self.plugin_dir(jdmail_test_broken_twistd="""\
            class Broken(:
                pass
            """)
        path = self.write_ini(f"""\
            [jdmail]
            datadir = {d}/data
            plugin_dirs = {d}
            [filters]
            chain = nothere
            [filter:nothere]
            """)
        p = subprocess.run(TWISTD + ["jdmail", "--config", path], env=env(), capture_output=True,
                           text=True, timeout=60, cwd=d)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertNotIn("Traceback", p.stdout + p.stderr)
        lines = p.stderr.splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertTrue(lines[0].startswith(f"jdmail: {path}: [filter:nothere] 'nothere': no filter plugin"))
        self.assertIn(f"{os.path.join(d, 'jdmail_test_broken_twistd.py')}: SyntaxError: ", lines[0])


class DropinEndToEndTests(unittest.TestCase):
    """The real server with the dropped-in filter configured purely through the INI."""

    def test_subject_word_rejected_others_delivered(self):
        server = running_server(
            self, overrides={"jdmail": {"plugin_dirs": DROPINS}, "filters": {"chain": "subject_words"}},
            extra_ini="[filter:subject_words]\nwords = lottery, viagra\n")
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.test")
            self.assertEqual(s.mail("alice@elsewhere.test")[0], 250)
            self.assertEqual(s.rcpt("bob@example.org")[0], 250)
            code, text = s.data(b"Subject: You won the LOTTERY\r\n\r\nClaim now.\r\n")
            self.assertEqual((code, text), (550, b"5.7.1 Message content rejected"))
            s.rset()
            self.assertEqual(s.mail("alice@elsewhere.test")[0], 250)
            self.assertEqual(s.rcpt("bob@example.org")[0], 250)
            code, text = s.data(b"Subject: minutes\r\n\r\nAll fine.\r\n")
            self.assertEqual(code, 250, text)
            self.assertTrue(text.startswith(b"2.0.0 Ok: queued as "), text)
        files = server.messages("bob@example.org")
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            self.assertIn(b"Subject: minutes\r\n", f.read())
        log = server.read_log()
        self.assertIn("filter verdict filter=subject_words stage=data action=reject reply=550 5.7.1 ", log)
        self.assertIn("reason=subject contains 'lottery'", log)
        self.assertEqual(os.listdir(os.path.join(server.datadir, "spool", "incoming")), [])
