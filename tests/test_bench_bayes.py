"""bench/bayes_accuracy.py --smoke runs (no network), so the benchmark cannot rot."""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BayesBenchSmokeTests(TestCase):

    def test_smoke(self):
        out = os.path.abspath(self.mktemp())
        env = dict(os.environ, PYTHONPATH=ROOT)
        done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bayes_accuracy.py"),
                               "--smoke", "--json", out], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.splitlines()
        self.assertTrue(lines[0].startswith("Bayes accuracy on generated (smoke): train 42, test 18"), lines)
        self.assertEqual(lines[1].split(), ["jdmail", "bogofilter"])
        self.assertTrue(lines[2].startswith("spam caught"), lines)
        with open(out) as f:
            report = json.load(f)
        self.assertEqual((report["train"], report["test"]), (42, 18))
        self.assertEqual(set(report["results"]), {"jdmail", "bogofilter"})
        for name, figures in report["results"].items():
            counts = figures["counts"]
            self.assertEqual((counts["spam"], counts["ham"]), (9, 9), name)
            self.assertEqual(counts["spam_caught"] + counts["fn"] + counts["unsure_spam"], 9, name)
        # the generated classes barely overlap: a working classifier gets them right
        jd = report["results"]["jdmail"]
        self.assertGreaterEqual(jd["spam_caught_pct"], 80.0)
        self.assertEqual(jd["ham_misclassified_pct"], 0.0)
        self.assertIn("bigrams=False ham_cutoff=0.2 spam_cutoff=0.9", report["cross_validation"])
