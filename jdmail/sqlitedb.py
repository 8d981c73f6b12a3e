"""Setting up a freshly opened SQLite database the way every jdmail database is:
pragmas first, then the schema work in one write transaction."""

import sqlite3


def prepare(db, pragmas, setup, failure):
    """Run ``pragmas`` on ``db``, then ``setup(db)`` inside BEGIN IMMEDIATE ... COMMIT.

    Returns what ``setup`` returns. On any error the transaction is rolled back and
    ``db`` closed; an sqlite3.Error is raised again as ``failure(error)`` (the caller's
    one-line exception), anything else as it is.
    """
    try:
        for pragma in pragmas:
            db.execute(pragma)
        db.execute("BEGIN IMMEDIATE")
        try:
            result = setup(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        db.close()
        raise failure(e) from None
    except BaseException:
        db.close()
        raise
    return result
