"""Print trial's result as 'N passed, N failed, N skipped' and exit non-zero on any
failure, error or (under CI) skip: a missing service is a failure, not a pass."""

import os
import re
import sys


def main(path, rc):
    text = open(path, encoding="utf-8", errors="replace").read()
    last = re.findall(r"^(PASSED|FAILED) \(([^)]*)\)", text, re.M)
    counts = {}
    if last:
        for part in last[-1][1].split(","):
            key, _, value = part.strip().partition("=")
            counts[key] = int(value or 0)
    passed = counts.get("successes", 0)
    failed = sum(counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses"))
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    if rc != 0 or failed or not last or passed == 0:
        return 1
    if skipped and os.environ.get("CI"):
        print("tests: skipped tests count as failures in CI", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
