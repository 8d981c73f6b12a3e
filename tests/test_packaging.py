"""`pip install .` must install the twistd plugin, so `twistd --help` lists jdmail."""

import os
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WheelTests(TestCase):
    def test_wheel_carries_the_twistd_plugin_and_no_twisted_package_init(self):
        out = tempfile.mkdtemp()
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "-w", out, REPO], check=True, capture_output=True)
        wheels = [n for n in os.listdir(out) if n.endswith(".whl")]
        self.assertEqual(len(wheels), 1)
        names = zipfile.ZipFile(os.path.join(out, wheels[0])).namelist()
        self.assertIn("twisted/plugins/jdmail_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("jdmail/plugins/jdmail_builtins.py", names)
        self.assertTrue(any(n.endswith("entry_points.txt") for n in names))

    def test_twistd_help_lists_jdmail(self):
        env = dict(os.environ, PYTHONPATH=REPO)
        p = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
                           capture_output=True, text=True, env=env, cwd=tempfile.mkdtemp())
        self.assertEqual(p.returncode, 0, p.stderr)
        line = [l for l in p.stdout.splitlines() if l.split()[:1] == ["jdmail"]]
        self.assertEqual(len(line), 1, p.stdout)
        self.assertIn("mail server", line[0])
