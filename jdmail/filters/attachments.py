"""The attachments filter: refuses (or quarantines) mail carrying files of dangerous
types, by file-name extension and MIME type, also inside zip archives.

The message is parsed on the thread pool (Python's email package; forwarded
message/rfc822 parts are walked too). A part is blocked when its file name (the
Content-Disposition filename or Content-Type name) ends in a listed extension
(trailing dots and spaces ignored, so ``invoice.pdf.exe.`` counts as exe), or its
MIME type is listed. A zip attachment (by name, type or content) is opened and the
names of its members checked the same way, nested zips down to ``zip_depth``.
A zip that cannot be read is let through (clamav is the place for broken archives).
"""

import email
import email.header
import email.policy
import io
import zipfile

from zope.interface import implementer

from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict

DEFAULT_EXTENSIONS = ["ade", "adp", "app", "bat", "chm", "cmd", "com", "cpl", "dll", "exe", "hta", "inf",
                      "ins", "isp", "iso", "img", "jar", "js", "jse", "lnk", "msc", "msi", "msp", "mst",
                      "pif", "ps1", "reg", "scr", "sct", "shb", "shs", "vb", "vbe", "vbs", "wsc", "wsf",
                      "wsh"]
DEFAULT_TYPES = ["application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
                 "application/x-ms-installer", "application/x-msi", "application/x-ms-shortcut",
                 "application/java-archive", "application/hta", "application/x-bat"]
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")


def _extension(name):
    name = (name or "").strip().rstrip(". ").lower()
    return name.rsplit(".", 1)[1] if "." in name else ""


class Finder:
    """Looks through one message for a blocked attachment."""

    def __init__(self, extensions, types, look_in_zip, zip_depth, max_zip_size):
        self.extensions = {e.lower().lstrip(".") for e in extensions}
        self.types = {t.lower() for t in types}
        self.look_in_zip, self.zip_depth, self.max_zip_size = look_in_zip, zip_depth, max_zip_size

    def find_in_file(self, path):
        """Blocking: the first blocked item as a short description, or None."""
        with open(path, "rb") as f:
            message = email.message_from_binary_file(f, policy=email.policy.compat32)
        for part in message.walk():
            if part.is_multipart():
                continue
            found = self.check_part(part)
            if found:
                return found
        return None

    def check_part(self, part):
        ctype = part.get_content_type().lower()
        try:
            name = part.get_filename() or ""
        except Exception:
            name = ""
        name = str(email.header.make_header(email.header.decode_header(name))) if "=?" in name else name
        if _extension(name) in self.extensions:
            return f"file {name!r}"
        if ctype in self.types:
            return f"type {ctype}" + (f" ({name!r})" if name else "")
        if self.look_in_zip and (_extension(name) == "zip" or ctype in ZIP_TYPES):
            payload = part.get_payload(decode=True) or b""
            return self.check_zip(payload, name or "zip attachment", 1)
        if self.look_in_zip and ctype == "application/octet-stream":
            payload = part.get_payload(decode=True) or b""
            if payload[:4] == b"PK\x03\x04":
                return self.check_zip(payload, name or "zip attachment", 1)
        return None

    def check_zip(self, data, label, depth):
        if self.max_zip_size and len(data) > self.max_zip_size:
            return None
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            infos = archive.infolist()
        except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError):
            return None
        for info in infos:
            if _extension(info.filename) in self.extensions:
                return f"file {info.filename!r} in {label!r}"
            if _extension(info.filename) == "zip" and depth < self.zip_depth \
                    and info.file_size <= (self.max_zip_size or info.file_size):
                try:
                    inner = archive.read(info)
                except (zipfile.BadZipFile, RuntimeError, ValueError, OSError, NotImplementedError):
                    continue        # encrypted or broken: its names were still checked above
                found = self.check_zip(inner, f"{label}/{info.filename}", depth + 1)
                if found:
                    return found
        return None


@implementer(IFilter)
class AttachmentsFilter:
    stages = frozenset({Stage.DATA})

    def __init__(self, name, settings, services):
        self.name, self.settings, self.services = name, settings, services
        self.finder = Finder(settings["extensions"], settings["mime_types"], settings["look_in_zip"],
                             settings["zip_depth"], settings["max_zip_size"])

    async def check(self, stage, txn):
        found = await self.services.run_blocking(self.finder.find_in_file, txn.message_path)
        if found is None:
            return Verdict.CONTINUE
        reason = f"blocked attachment: {found}"
        if self.settings["action"] == "quarantine":
            return Verdict.quarantine(reason=reason)
        return Verdict.reject("Message refused: attachment type not allowed", code=554,
                              enhanced="5.7.1", reason=reason)


@implementer(IFilterFactory)
class AttachmentsFilterFactory:
    kind = "attachments"
    description = "Reject or quarantine mail with dangerous attachments (by extension/MIME type, also in zips)."
    options = {
        "extensions": Option.list(str, default=DEFAULT_EXTENSIONS, help="file-name extensions to block"),
        "mime_types": Option.list(str, default=DEFAULT_TYPES, help="MIME types to block"),
        "look_in_zip": Option.bool(default=True, help="also check the file names inside zip attachments"),
        "zip_depth": Option.int(default=2, help="how deep to open zips inside zips"),
        "max_zip_size": Option.size(default=25 * 1024**2, help="larger zips are not opened; 0 = no limit"),
        "action": Option.choice(("reject", "quarantine"), default="reject",
                                help="reject (554 5.7.1) or quarantine"),
    }

    def build(self, name, settings, services):
        return AttachmentsFilter(name, settings, services)
