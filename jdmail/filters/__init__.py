"""Filters: the chain runner (chain.py), what it records (results.py), the central
quarantine (quarantine.py), and the built-in filters (clamav, spamassassin,
attachments), which register as plugins exactly like a third-party filter.

The contract a filter plugin relies on
======================================

A filter provides ``jdmail.interfaces.IFilter``: ``name`` (its ``[filter:NAME]``),
``stages`` (a frozenset of ``Stage``) and ``check(stage, txn)``, which returns a
``Verdict``, a Deferred of one, or is ``async def``. Its factory
(``IFilterFactory``: ``kind``, ``description``, ``options``, ``build(name, settings,
services)``) is a module-level instance in a module of any ``jdmail/plugins/``
directory on the Python path, or of a ``[jdmail] plugin_dirs`` directory.

Stages and what ``txn`` holds
-----------------------------
Every stage: ``client_ip``, ``client_port``, ``local_ip`` (our address the client
connected to), ``listener`` (the INI section:
smtp, submission, smtps), ``tls`` (bool), ``hostname`` (this server's name),
``auth_user`` ('' when not authenticated), ``filter_results``.

- ``CONNECT``: before the greeting.
- ``HELO``: + ``helo`` (the EHLO/HELO argument).
- ``MAIL``: + ``sender`` ('' for the null sender), ``smtputf8``, ``declared_size``
  (the SIZE parameter or None), ``outbound`` (authenticated or from mynetworks).
- ``RCPT``: + ``recipient`` (the address being checked) and ``recipients``
  ([(address, Resolution)], accepted so far, this one last).
- ``DATA``: + ``queue_id``, ``headers`` (an email.message.Message of the header),
  ``message_path`` / ``open_message()`` (the whole message as it will be stored,
  jdmail's Return-Path/Received first; read it in a thread: ``services.run_blocking``),
  ``size``.
- ``OUTBOUND``: the same as DATA, after it, only for ``outbound`` mail: the place to
  add a DKIM signature.

Verdicts and how they combine
-----------------------------
- ``Verdict.CONTINUE`` / ``Verdict.add_headers(("X-Name", "value"), ...)``: go on.
- ``Verdict.reject(text, code=550, enhanced="5.7.1")``, ``Verdict.tempfail(text,
  code=451, enhanced="4.7.1")``: refuse the stage's command (at CONNECT a reject is 554
  instead of the greeting, after which only QUIT is answered (RFC 5321 3.1), and a
  tempfail is 421 and the connection closes; at RCPT only that recipient is refused).
  Codes that do not fit the action are replaced (5xx for reject, 4xx for tempfail).
- ``Verdict.accept()``: no later filter of the chain runs for this transaction (at
  CONNECT/HELO: for the connection); the message goes to the inbox.
- ``Verdict.discard()``: the client hears 250, the message is delivered nowhere (logged).
- ``Verdict.quarantine()``: the message goes where the filter's ``quarantine`` key
  says: ``central`` (``<datadir>/quarantine``, ``jdmailctl quarantine``) or ``junk``
  (each local recipient's folder marked \\Junk, made when missing).

Filters run in ``[filters] chain`` order. A REJECT ends the stage at once; ACCEPT
ends it and skips the filters after it in later stages; TEMPFAIL, DISCARD and
QUARANTINE let the rest run, and the strongest verdict wins (REJECT > TEMPFAIL >
DISCARD > ACCEPT > QUARANTINE > CONTINUE; among equals the first). A QUARANTINE,
DISCARD or ACCEPT at an earlier stage holds for the whole transaction.

Each call has the filter's ``timeout`` (``[filter:NAME] timeout``, default
``[filters] timeout``); on a timeout, an exception or a value that is not a Verdict
the filter's ``on_error`` applies (tempfail, continue, accept or reject; default
``[filters] on_error``, itself default tempfail). Every verdict is logged as one line::

    filter verdict filter=NAME stage=data action=reject reply=554 5.7.0 score=- id=… client=… ms=12 reason=…

Scores, Authentication-Results and added headers
------------------------------------------------
Any verdict may carry ``headers``, ``score`` (points added to the transaction's
spam score; ``tests`` names them), ``spam=True`` (tag as spam whatever the score)
and ``auth_results`` (``AuthResult`` values). ``txn.filter_results`` shows what the
earlier filters gave: ``.score`` (None when nobody scored), ``.auth_results``, and
``.notes`` (a dict for the filter's own state between stages; key it by ``self.name``).

When the message is accepted the chain prepends, after jdmail's own trace headers:
``Authentication-Results: <hostname>; <method results>`` (when any filter gave
one; incoming ones naming this host are removed), ``X-Spam-Flag: YES`` (tagged),
``X-Spam-Score`` and ``X-Spam-Status: Yes|No, score=S required=T tests=…`` (when any
filter scored), then the filters' own headers. Tagged means a filter said
``spam=True`` or the score reached ``[filters] tag_score``; tagged mail goes to the
Junk folder when ``[filters] junk_tagged`` is on. A score at or above ``[filters]
reject_score`` (when set) refuses the message after DATA with 550 5.7.1.
"""
