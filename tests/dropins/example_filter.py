# acme_subject.py, dropped into a [jdmail] plugin_dirs directory (or <sys.path entry>/jdmail/plugins/)
#
# The example third-party filter of STYLE.md / README.rst ("Writing a filter"),
# unchanged: tests/test_registry.py finds it purely through ``[jdmail] plugin_dirs``
# and configures it purely through the INI:
#
#   [jdmail]
#   plugin_dirs = tests/dropins
#   [filters]
#   chain = subject_words
#   [filter:subject_words]
#   words = lottery, viagra
from zope.interface import implementer
from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict

@implementer(IFilter)
class SubjectWordFilter:
    stages = frozenset({Stage.DATA})
    def __init__(self, name, words):
        self.name, self._words = name, [w.lower() for w in words]
    async def check(self, stage, txn):
        subject = txn.headers.get("Subject", "").lower()
        hit = next((w for w in self._words if w in subject), None)
        return Verdict.CONTINUE if hit is None else Verdict.reject(
            "Message content rejected", reason=f"subject contains {hit!r}")

@implementer(IFilterFactory)
class SubjectWordFilterFactory:
    kind = "subject_words"
    description = "Reject mail whose Subject contains one of the listed words."
    options = {"words": Option.list(str, required=True, help="comma-separated, case-insensitive")}
    def build(self, name, settings, services):
        return SubjectWordFilter(name, settings["words"])

subjectWords = SubjectWordFilterFactory()   # getPlugins finds this instance, not the class
