"""jdmail's own Bayesian spam classifier.

``tokenizer`` turns a raw message into tokens, ``classifier`` holds the math
(Robinson's f(w), Fisher's chi-square combining) and the train/score logic,
``store`` keeps the token counts in a SQL database over plain DB-API (SQLite by
default, MySQL/MariaDB when configured), ``sources`` reads Maildir folders and
mbox files for training, and ``learner`` trains from IMAP moves into and out of
Junk without ever failing the IMAP command.
"""
