"""``bench/run WORKLOAD --smoke`` (tiny sizes, jdmail alone) runs every workload of the
harness, so it cannot rot; each check is that the run completed, verified its mail
and wrote a table, the JSON file and the PNG chart with jdmail's figures."""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchSmokeTests(TestCase):

    def smoke(self, workload, *extra):
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        out_json, out_png = os.path.join(tmp, "r.json"), os.path.join(tmp, "r.png")
        env = dict(os.environ, PYTHONPATH=ROOT)
        done = subprocess.run([sys.executable, "-m", "bench", workload, "--smoke", "--json", out_json,
                               "--png", out_png, "--tmpdir", tmp, *extra],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        with open(out_json) as f:
            result = json.load(f)
        with open(out_png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertEqual(result["order"], ["jdmail"])
        self.assertEqual(result["servers"]["jdmail"]["status"], "ok")
        self.assertEqual(result["details"]["jdmail"]["errors"], [])
        rows = {r["key"]: r for r in result["rows"]}
        self.assertIn(rows[next(iter(rows))]["label"], done.stdout)
        # the temp dir of the run is gone (only our JSON and PNG are left)
        self.assertEqual(sorted(os.listdir(tmp)), ["r.json", "r.png"])
        return result, rows

    def test_smtp(self):
        result, rows = self.smoke("smtp")
        run = result["details"]["jdmail"]["runs"][0]
        # smtp-source's 40 messages and the probe's, every one found in its Maildir
        self.assertGreaterEqual(run["messages"], 41)
        self.assertEqual(sum(run["delivered"].values()), run["messages"])
        self.assertEqual(run["delivered"]["user1@example.org"], 20)
        self.assertGreater(rows["smtp_msgs_per_s"]["values"]["jdmail"], 0)
        self.assertGreater(rows["smtp_cpu_per_1000"]["values"]["jdmail"], 0)
        self.assertGreater(rows["smtp_peak_rss_mb"]["values"]["jdmail"], 10)
        self.assertLessEqual(rows["smtp_p50_ms"]["values"]["jdmail"], rows["smtp_p99_ms"]["values"]["jdmail"])

    def test_imap(self):
        result, rows = self.smoke("imap")
        self.assertGreater(rows["mixed_ops_per_s"]["values"]["jdmail"], 0)
        self.assertGreater(rows["mixed_peak_rss_mb"]["values"]["jdmail"], 10)
        self.assertEqual(result["details"]["jdmail"]["idle"][0]["opened"], 10)
        self.assertIn("check: big mailbox answers agree: 500 messages", "\n".join(result["checks"]))

    def test_pop3(self):
        result, rows = self.smoke("pop3")
        run = result["details"]["jdmail"]["runs"][0]
        self.assertEqual(run["messages"], 60)          # 3 clients x 20, each retrieved and deleted
        # USER, PASS, UIDL, 20 RETR, 20 DELE, QUIT per client
        self.assertEqual(run["commands"], 3 * 44)
        self.assertGreater(rows["pop3_msgs_per_s"]["values"]["jdmail"], 0)

    def test_connections(self):
        result, rows = self.smoke("connections")
        run = result["details"]["jdmail"]["runs"][0]
        self.assertEqual((run["opened"], run["idling"]), (20, 20))
        self.assertGreater(rows["conn20_rss_total"]["values"]["jdmail"], 10)
        self.assertEqual(rows["conn20_processes"]["values"]["jdmail"], 1)

    def test_queue(self):
        result, rows = self.smoke("queue")
        run = result["details"]["jdmail"]["runs"][0]
        self.assertEqual((run["messages"], run["received"]), (30, 30))
        self.assertGreater(rows["queue_msgs_per_s"]["values"]["jdmail"], 0)

    def test_filters(self):
        # generated messages (no network), a private clamd and spamd, a trained Bayes table
        result, rows = self.smoke("filters")
        run = result["details"]["jdmail"]["runs"][0]
        self.assertEqual((run["messages"], run["accepted"], run["stored"]), (10, 10, 10))
        self.assertEqual(result["labels"]["jdmail"], "jdmail + filters")
        self.assertGreater(rows["filters_helpers_cpu"]["values"]["jdmail"], 0)


class BenchOptionsTests(TestCase):
    """bench/run's option parsing, without running anything."""

    def test_all_runs_every_workload_with_its_defaults(self):
        from bench import cli
        runs = cli.parse_args(["all", "--rounds", "2", "--json", "x.json"])
        self.assertEqual([a.workload for a in runs], list(cli.WORKLOADS))
        self.assertEqual({a.rounds for a in runs}, {2})
        smtp = runs[cli.WORKLOADS.index("smtp")]
        self.assertEqual((smtp.messages, smtp.size, smtp.sessions), (10000, 4096, 20))
        self.assertEqual(smtp.servers, ["jdmail", "postfix", "smtp-sink"])
        conn = runs[cli.WORKLOADS.index("connections")]
        self.assertEqual(conn.sizes, [1000, 10000])

    def test_sizes_and_servers_are_checked(self):
        from bench import cli
        self.assertEqual(cli.parse_args(["smtp", "--size", "100K"]).size, 102400)
        for argv in (["smtp", "--size", "big"], ["pop3", "--servers", "postfix"], ["smtp", "--jdmail-set", "x"]):
            with self.assertRaises(SystemExit) as done:
                with open(os.devnull, "w") as null:
                    saved, sys.stderr = sys.stderr, null
                    try:
                        cli.parse_args(argv)
                    finally:
                        sys.stderr = saved
            self.assertEqual(done.exception.code, 2, argv)
