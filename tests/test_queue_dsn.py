"""RFC 3464 DSNs built by jdmail.queue.dsn, parsed back with the email package."""

import email
import io
import re
from email import policy

from twisted.trial.unittest import TestCase

from jdmail.interfaces import QueuedMessage, QueuedRecipient
from jdmail.queue import dsn

ARRIVED = 1700000000.0
NOW = ARRIVED + 3600
ORIGINAL = (b"From: Alice <alice@b.example>\r\nTo: x@y.example\r\nSubject: hello\r\n"
            b"Message-ID: <orig@b.example>\r\n\r\nThe body.\r\nSecond line.\r\n")


def message(ret="", envid="", sender="alice@b.example", recipients=()):
    return QueuedMessage(queue_id="Q123", sender=sender, recipients=list(recipients),
                         arrived=ARRIVED, size=len(ORIGINAL), ret=ret, envid=envid)


def build(kind="failure", msg=None, recipients=None, original=ORIGINAL, **kw):
    if msg is None:
        msg = message()
    if recipients is None:
        recipients = [QueuedRecipient("x@y.example",
                                      last_error="550 5.1.1 <x@y.example>: User unknown")]
    kw.setdefault("now", NOW)
    data = dsn.build_dsn(kind, msg, recipients, io.BytesIO(original), "mx.b.example", **kw)
    return data, email.message_from_bytes(data, policy=policy.default)


def fields(parsed):
    """(per-message block, [per-recipient blocks]) of the delivery-status part."""
    blocks = parsed.get_payload()[1].get_payload()
    return blocks[0], blocks[1:]


class EnhancedCodeTests(TestCase):

    def test_extracts(self):
        self.assertEqual(dsn.enhanced_code("550 5.1.1 <x@y>: User unknown", "5.0.0"), "5.1.1")
        self.assertEqual(dsn.enhanced_code("451-4.7.1 try later", "4.0.0"), "4.7.1")
        self.assertEqual(dsn.enhanced_code("5.2.2 mailbox full", "5.0.0"), "5.2.2")
        self.assertEqual(dsn.enhanced_code("552 5.3.004 x", "5.0.0"), "5.3.4")

    def test_default(self):
        self.assertEqual(dsn.enhanced_code("550 User unknown", "5.0.0"), "5.0.0")
        self.assertEqual(dsn.enhanced_code("", "4.0.0"), "4.0.0")
        self.assertEqual(dsn.enhanced_code("mailbox full", "5.0.0"), "5.0.0")
        self.assertEqual(dsn.enhanced_code("550 version 5.1.1x", "5.0.0"), "5.0.0")


class PolicyTests(TestCase):

    def test_null_sender_never_bounced(self):
        self.assertFalse(dsn.should_bounce(message(sender="")))
        self.assertFalse(dsn.should_bounce(message(sender="<>")))
        self.assertTrue(dsn.should_bounce(message()))
        r = QueuedRecipient("x@y.example", notify=("FAILURE",))
        self.assertEqual(dsn.notice_recipients("failure", message(sender="", recipients=[r])), [])
        self.assertEqual(dsn.notice_recipients("failure", message(recipients=[r])), [r])

    def test_notify_default(self):
        r = QueuedRecipient("x@y.example")
        self.assertTrue(dsn.wants("failure", r))
        self.assertTrue(dsn.wants("delay", r))
        self.assertFalse(dsn.wants("success", r))

    def test_notify_explicit(self):
        self.assertFalse(dsn.wants("failure", QueuedRecipient("a", notify=("NEVER",))))
        self.assertFalse(dsn.wants("delay", QueuedRecipient("a", notify=("NEVER",))))
        self.assertFalse(dsn.wants("success", QueuedRecipient("a", notify=("NEVER",))))
        only_success = QueuedRecipient("a", notify=("SUCCESS",))
        self.assertTrue(dsn.wants("success", only_success))
        self.assertFalse(dsn.wants("failure", only_success))
        self.assertFalse(dsn.wants("delay", only_success))
        both = QueuedRecipient("a", notify=("success", "failure"))
        self.assertTrue(dsn.wants("success", both))
        self.assertTrue(dsn.wants("failure", both))
        self.assertFalse(dsn.wants("delay", both))
        self.assertRaises(ValueError, dsn.wants, "bogus", both)

    def test_notice_recipients_filters(self):
        a = QueuedRecipient("a@y.example")
        b = QueuedRecipient("b@y.example", notify=("NEVER",))
        c = QueuedRecipient("c@y.example", notify=("SUCCESS", "DELAY"))
        msg = message(recipients=[a, b, c])
        self.assertEqual(dsn.notice_recipients("failure", msg), [a])
        self.assertEqual(dsn.notice_recipients("delay", msg), [a, c])
        self.assertEqual(dsn.notice_recipients("success", msg, [b, c]), [c])


class FailureTests(TestCase):

    def test_structure_and_headers(self):
        data, parsed = build()
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        self.assertEqual(parsed.get_param("report-type"), "delivery-status")
        self.assertEqual(str(parsed["From"]), "Mail Delivery System <MAILER-DAEMON@mx.b.example>")
        self.assertEqual(parsed["From"].addresses[0].addr_spec, "MAILER-DAEMON@mx.b.example")
        self.assertEqual(str(parsed["To"]), "alice@b.example")
        self.assertEqual(str(parsed["Subject"]), "Undelivered Mail Returned to Sender")
        self.assertEqual(str(parsed["Auto-Submitted"]), "auto-replied")
        self.assertEqual(str(parsed["MIME-Version"]), "1.0")
        self.assertEqual(parsed["Date"].datetime.timestamp(), NOW)
        self.assertTrue(re.match(r"^<[^<>@\s]+@mx\.b\.example>$", str(parsed["Message-ID"])))
        self.assertEqual([p.get_content_type() for p in parsed.get_payload()],
                         ["text/plain", "message/delivery-status", "message/rfc822"])
        self.assertEqual(parsed.defects, [])
        for part in parsed.walk():
            self.assertEqual(part.defects, [], part.get_content_type())

    def test_human_part(self):
        recipients = [QueuedRecipient("x@y.example", last_error="550 5.1.1 <x@y.example>: User unknown"),
                      QueuedRecipient("z@y.example", last_error="mailbox is full")]
        _, parsed = build(recipients=recipients)
        text = parsed.get_payload()[0].get_content()
        self.assertIn("<x@y.example>: 550 5.1.1 <x@y.example>: User unknown", text)
        self.assertIn("<z@y.example>: mailbox is full", text)
        self.assertIn("mx.b.example", text)

    def test_delivery_status_fields(self):
        recipients = [QueuedRecipient("x@y.example",
                                      last_error="550 5.1.1 <x@y.example>: User unknown")]
        _, parsed = build(recipients=recipients, remote_mta="mx.y.example")
        per_message, per_rcpt = fields(parsed)
        self.assertEqual(per_message["Reporting-MTA"], "dns; mx.b.example")
        self.assertEqual(email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp(),
                         ARRIVED)
        self.assertIsNone(per_message["Original-Envelope-Id"])
        self.assertEqual(len(per_rcpt), 1)
        r = per_rcpt[0]
        self.assertEqual(r["Final-Recipient"], "rfc822; x@y.example")
        self.assertIsNone(r["Original-Recipient"])
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Status"], "5.1.1")
        self.assertEqual(r["Remote-MTA"], "dns; mx.y.example")
        self.assertEqual(r["Diagnostic-Code"], "smtp; 550 5.1.1 <x@y.example>: User unknown")
        self.assertEqual(email.utils.parsedate_to_datetime(r["Last-Attempt-Date"]).timestamp(), NOW)
        self.assertIsNone(r["Will-Retry-Until"])

    def test_remote_mta_from_reply_prefix_and_dict(self):
        recipients = [QueuedRecipient("a@y.example", last_error="mx1.y.example said: 554 no thanks"),
                      QueuedRecipient("b@y.example", last_error="550 5.7.1 denied")]
        _, parsed = build(recipients=recipients, remote_mta={"b@y.example": "mx2.y.example"})
        _, (a, b) = fields(parsed)
        self.assertEqual(a["Remote-MTA"], "dns; mx1.y.example")
        self.assertEqual(a["Diagnostic-Code"], "smtp; 554 no thanks")
        self.assertEqual(a["Status"], "5.0.0")
        self.assertEqual(b["Remote-MTA"], "dns; mx2.y.example")
        self.assertEqual(b["Status"], "5.7.1")

    def test_local_reason_has_no_remote_mta(self):
        recipients = [QueuedRecipient("x@y.example", last_error="Domain y.example has a null MX")]
        _, parsed = build(recipients=recipients)
        _, (r,) = fields(parsed)
        self.assertIsNone(r["Remote-MTA"])
        self.assertFalse((r["Diagnostic-Code"] or "").startswith("smtp;"))
        self.assertEqual(r["Status"], "5.0.0")
        self.assertEqual(r["Action"], "failed")

    def test_expired_with_temporary_reply(self):
        recipients = [QueuedRecipient("x@y.example", last_error="451 4.4.1 connection timed out")]
        _, parsed = build(recipients=recipients)
        _, (r,) = fields(parsed)
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Status"], "4.4.1")
        recipients = [QueuedRecipient("x@y.example", last_error="421 service not available")]
        _, (r,) = fields(build(recipients=recipients)[1])
        self.assertEqual(r["Status"], "4.0.0")

    def test_multiline_reply_is_one_field(self):
        recipients = [QueuedRecipient("x@y.example",
                                      last_error="550-5.1.1 no such user\r\n550 5.1.1 see docs")]
        data, parsed = build(recipients=recipients)
        _, (r,) = fields(parsed)
        self.assertEqual(r["Status"], "5.1.1")
        self.assertEqual(r["Diagnostic-Code"], "smtp; 550-5.1.1 no such user 550 5.1.1 see docs")

    def test_several_recipients(self):
        recipients = [QueuedRecipient(f"u{i}@y.example", last_error=f"550 5.1.{i} nope")
                      for i in range(1, 4)]
        _, parsed = build(recipients=recipients)
        _, blocks = fields(parsed)
        self.assertEqual([b["Final-Recipient"] for b in blocks],
                         [f"rfc822; u{i}@y.example" for i in range(1, 4)])
        self.assertEqual([b["Status"] for b in blocks], ["5.1.1", "5.1.2", "5.1.3"])

    def test_envid_and_orcpt(self):
        recipients = [QueuedRecipient("x@y.example", last_error="550 5.1.1 unknown",
                                      orcpt="rfc822;Xavier+2Btag@y.example"),
                      QueuedRecipient("z@y.example", last_error="550 5.1.1 unknown",
                                      orcpt="zed@y.example")]
        _, parsed = build(msg=message(envid="QQ314159"), recipients=recipients)
        per_message, (x, z) = fields(parsed)
        self.assertEqual(per_message["Original-Envelope-Id"], "QQ314159")
        self.assertEqual(x["Original-Recipient"], "rfc822; Xavier+tag@y.example")
        self.assertEqual(x["Final-Recipient"], "rfc822; x@y.example")
        self.assertEqual(z["Original-Recipient"], "rfc822; zed@y.example")
        _, parsed = build(msg=message(envid="a+2Bb"), recipients=recipients)
        self.assertEqual(fields(parsed)[0]["Original-Envelope-Id"], "a+b")

    def test_default_ret_returns_whole_message(self):
        _, parsed = build()
        part = parsed.get_payload()[2]
        self.assertEqual(part.get_content_type(), "message/rfc822")
        inner = part.get_payload()[0]
        self.assertEqual(str(inner["Subject"]), "hello")
        self.assertEqual(str(inner["Message-ID"]), "<orig@b.example>")
        self.assertIn("Second line.", inner.get_content())

    def test_ret_full(self):
        _, parsed = build(msg=message(ret="FULL"))
        part = parsed.get_payload()[2]
        self.assertEqual(part.get_content_type(), "message/rfc822")
        self.assertIn("The body.", part.get_payload()[0].get_content())

    def test_ret_hdrs(self):
        data, parsed = build(msg=message(ret="HDRS"))
        part = parsed.get_payload()[2]
        self.assertEqual(part.get_content_type(), "text/rfc822-headers")
        content = part.get_payload(decode=True)
        self.assertIn(b"Subject: hello\r\n", content)
        self.assertIn(b"Message-ID: <orig@b.example>", content)
        self.assertNotIn(b"The body.", data)

    def test_cap_returns_headers_only(self):
        big = ORIGINAL + b"x" * 998 + b"\r\n"
        big = big * ((dsn.MAX_FULL_ORIGINAL // len(big)) + 2)
        self.assertGreater(len(big), dsn.MAX_FULL_ORIGINAL)
        data, parsed = build(msg=message(ret="FULL"), original=big)
        self.assertLess(len(data), 64 * 1024)
        part = parsed.get_payload()[2]
        self.assertEqual(part.get_content_type(), "text/rfc822-headers")
        self.assertIn(b"Subject: hello", part.get_payload(decode=True))
        self.assertNotIn(b"The body.", data)
        self.assertIn("too large", parsed.get_payload()[0].get_content())

    def test_cap_is_configurable_and_exact(self):
        _, parsed = build(original=ORIGINAL, max_full=len(ORIGINAL))
        self.assertEqual(parsed.get_payload()[2].get_content_type(), "message/rfc822")
        _, parsed = build(original=ORIGINAL, max_full=len(ORIGINAL) - 1)
        self.assertEqual(parsed.get_payload()[2].get_content_type(), "text/rfc822-headers")

    def test_no_original(self):
        data = dsn.build_dsn("failure", message(), [QueuedRecipient("x@y.example")], None,
                             "mx.b.example", now=NOW)
        parsed = email.message_from_bytes(data, policy=policy.default)
        self.assertEqual(len(parsed.get_payload()), 2)

    def test_given_boundary(self):
        data, parsed = build(boundary="BOUNDARY-1")
        self.assertEqual(parsed.get_boundary(), "BOUNDARY-1")
        self.assertIn(b"\r\n--BOUNDARY-1--\r\n", data)
        self.assertTrue(data.endswith(b"\r\n--BOUNDARY-1--\r\n"))

    def test_generated_boundary_is_valid_and_unique(self):
        b1 = build()[1].get_boundary()
        b2 = build()[1].get_boundary()
        self.assertNotEqual(b1, b2)
        self.assertLessEqual(len(b1), 70)
        self.assertTrue(re.match(r"^[A-Za-z0-9'()+_,./:=?-]+$", b1))

    def test_unknown_kind(self):
        self.assertRaises(ValueError, build, kind="bogus")


class DelayTests(TestCase):

    def test_delay(self):
        recipients = [QueuedRecipient("x@y.example", last_error="451 4.7.1 greylisted, try later",
                                      orcpt="rfc822;x@y.example")]
        data, parsed = build("delay", recipients=recipients, remote_mta="mx.y.example",
                             lifetime=2 * 86400)
        self.assertEqual(str(parsed["Subject"]), "Delayed Mail (still being retried)")
        self.assertEqual(str(parsed["Auto-Submitted"]), "auto-replied")
        per_message, (r,) = fields(parsed)
        self.assertEqual(per_message["Reporting-MTA"], "dns; mx.b.example")
        self.assertEqual(r["Action"], "delayed")
        self.assertEqual(r["Status"], "4.7.1")
        self.assertEqual(r["Remote-MTA"], "dns; mx.y.example")
        self.assertEqual(r["Diagnostic-Code"], "smtp; 451 4.7.1 greylisted, try later")
        self.assertEqual(r["Original-Recipient"], "rfc822; x@y.example")
        self.assertEqual(email.utils.parsedate_to_datetime(r["Will-Retry-Until"]).timestamp(),
                         ARRIVED + 2 * 86400)
        self.assertIn("WARNING ONLY", parsed.get_payload()[0].get_content())
        # headers only by default
        self.assertEqual(parsed.get_payload()[2].get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"The body.", data)

    def test_delay_default_status_and_ret_full(self):
        recipients = [QueuedRecipient("x@y.example", last_error="connection refused")]
        _, parsed = build("delay", msg=message(ret="FULL"), recipients=recipients)
        _, (r,) = fields(parsed)
        self.assertEqual(r["Status"], "4.0.0")
        self.assertIsNone(r["Remote-MTA"])
        self.assertEqual(parsed.get_payload()[2].get_content_type(), "message/rfc822")
        self.assertEqual(email.utils.parsedate_to_datetime(r["Will-Retry-Until"]).timestamp(),
                         ARRIVED + dsn.DEFAULT_LIFETIME)


class SuccessTests(TestCase):

    def test_delivered(self):
        recipients = [QueuedRecipient("x@y.example", notify=("SUCCESS",), orcpt="rfc822;x@y.example")]
        data, parsed = build("success", recipients=recipients)
        self.assertEqual(str(parsed["Subject"]), "Successful Mail Delivery Report")
        _, (r,) = fields(parsed)
        self.assertEqual(r["Action"], "delivered")
        self.assertEqual(r["Status"], "2.0.0")
        self.assertIsNone(r["Will-Retry-Until"])
        self.assertIsNone(r["Diagnostic-Code"])
        self.assertEqual(parsed.get_payload()[2].get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"The body.", data)

    def test_relayed(self):
        recipients = [QueuedRecipient("x@y.example", notify=("SUCCESS",),
                                      last_error="250 2.6.0 queued as ABC")]
        _, parsed = build("success", msg=message(ret="FULL"), recipients=recipients,
                          relayed=True, remote_mta="mx.y.example")
        _, (r,) = fields(parsed)
        self.assertEqual(r["Action"], "relayed")
        self.assertEqual(r["Status"], "2.6.0")
        self.assertEqual(r["Remote-MTA"], "dns; mx.y.example")
        self.assertEqual(r["Diagnostic-Code"], "smtp; 250 2.6.0 queued as ABC")
        self.assertEqual(parsed.get_payload()[2].get_content_type(), "message/rfc822")


class LineEndTests(TestCase):

    def assertCRLF(self, data):
        self.assertNotIn(b"\r\r", data)
        self.assertIsNone(re.search(rb"(?<!\r)\n", data), "bare LF")
        self.assertIsNone(re.search(rb"\r(?!\n)", data), "bare CR")
        self.assertTrue(data.endswith(b"\r\n"))

    def test_crlf_everywhere(self):
        lf_original = b"Subject: lf\nFrom: a@b.example\n\nline one\nline two\rthree\n"
        recipients = [QueuedRecipient("x@y.example", last_error="550-5.1.1 a\n550 5.1.1 b")]
        for kind in dsn.KINDS:
            for ret in ("", "FULL", "HDRS"):
                for original in (ORIGINAL, lf_original, b"Subject: no end"):
                    data, parsed = build(kind, msg=message(ret=ret), recipients=recipients,
                                         original=original)
                    self.assertCRLF(data)
                    self.assertEqual(parsed.get_content_type(), "multipart/report")

    def test_lf_original_returned_with_crlf(self):
        lf_original = b"Subject: lf\nFrom: a@b.example\n\nline one\nline two\n"
        data, parsed = build(original=lf_original)
        self.assertIn(b"Subject: lf\r\nFrom: a@b.example\r\n\r\nline one\r\nline two\r\n", data)

    def test_7bit_unless_original_is_8bit(self):
        data, parsed = build()
        self.assertTrue(data.isascii())
        data, parsed = build(original=ORIGINAL.replace(b"The body.", "Grüße".encode()))
        self.assertIn(b"Content-Transfer-Encoding: 8bit", data)
        inner = parsed.get_payload()[2].get_payload()[0]
        self.assertIn("Grüße".encode(), inner.get_payload(decode=True))
        self.assertCRLF(data)

    def test_non_ascii_reason_and_address(self):
        recipients = [QueuedRecipient("jörg@y.example", last_error="550 5.1.1 Benutzer unbekannt: jörg")]
        data, parsed = build(recipients=recipients, original=ORIGINAL)
        self.assertTrue(data.isascii())
        self.assertCRLF(data)
        _, (r,) = fields(parsed)
        self.assertEqual(r["Final-Recipient"], "utf-8; j\\x{F6}rg@y.example")
        self.assertIn("jörg@y.example", parsed.get_payload()[0].get_content())
